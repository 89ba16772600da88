"""The genome of OFA-ResNet spaces (see :mod:`.genes`)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from .genes import ChoiceGenes

if TYPE_CHECKING:
    from .resnet import ResNetArch, ResNetSpace

__all__ = ["ResNetGenome", "resnet_genome"]


class ResNetGenome(ChoiceGenes):
    """Genes of an OFA-ResNet space::

        [ stem-block choice | extra depth per stage | expand per slot | width per position | r ]

    Every gene is its own mutation group. Costs of these networks are not additive per
    gene (a block's width depends on its neighbours' width choices), so features and
    costs are computed arch by arch from :meth:`decode`, with a cache in the callers."""

    def __init__(self, space: ResNetSpace) -> None:
        self.space = space
        self.n_stages, self.n_slots = space.num_stages, space.num_slots
        self.stem_choices = np.asarray(space.stem_depth_choices)
        self.cardinality = np.concatenate(
            [
                [len(space.stem_depth_choices)],
                np.full(self.n_stages, len(space.depths)),
                np.full(self.n_slots, len(space.expand_ratios)),
                np.full(space.num_widths, len(space.width_mults)),
                [len(space.resolutions)],
            ]
        ).astype(np.intp)
        if self.cardinality.max() > 126:
            raise ValueError("search supports at most 126 choices per decision")
        self.cardinality_f32 = self.cardinality.astype(np.float32)
        self.gene_group = np.arange(len(self.cardinality), dtype=np.intp)
        self.e_start = 1 + self.n_stages
        slot_stage = np.concatenate([np.full(m, i) for i, m in enumerate(space.stage_max_depths)])
        slot_pos = np.concatenate([np.arange(m) for m in space.stage_max_depths])
        self._slot_stage, self._slot_pos = slot_stage, slot_pos
        self._base = np.asarray(space.base_depths)[slot_stage]

    def active(self, genes: np.ndarray) -> np.ndarray:
        """(N, S) bool: which bottleneck slots run."""
        extra = np.asarray(self.space.depths)[genes[:, 1 : 1 + self.n_stages]]
        return self._slot_pos < (self._base + extra[:, self._slot_stage])

    def network_keys(self, genes: np.ndarray) -> np.ndarray:
        """(N,) opaque keys, equal exactly when two rows run the same network."""
        e = genes[:, self.e_start : self.e_start + self.n_slots]
        keys = genes.copy()
        keys[:, self.e_start : self.e_start + self.n_slots] = (e + 1) * self.active(genes)
        keys = np.ascontiguousarray(keys, dtype=np.int8)
        return keys.view(np.dtype((np.void, keys.shape[1]))).ravel()

    def encode(self, genes: np.ndarray) -> np.ndarray:
        """(N, D) float32 features, row by row ``space.encode``."""
        return np.stack([self.space.encode(a) for a in self.decode(genes)]).astype(np.float32)

    def genes_of(self, archs: Iterable[Any]) -> np.ndarray:
        space = self.space
        rows = []
        for raw in archs:
            arch = space.parse(raw)
            rows.append(
                [space.stem_depth_choices.index(arch.d[0])]
                + [space.depths.index(d) for d in arch.d[1:]]
                + [space.expand_ratios.index(e) if e in space.expand_ratios else 0 for e in arch.e]
                + list(arch.w)
                + [space.resolutions.index(arch.r)]
            )
        return np.array(rows, dtype=np.intp).reshape(len(rows), self.n_genes)

    def decode(self, genes: np.ndarray, canonical: bool = False) -> list[ResNetArch]:
        space = self.space
        s, t = self.n_slots, self.n_stages
        d0 = self.stem_choices[genes[:, 0]]
        d = np.asarray(space.depths)[genes[:, 1 : 1 + t]]
        e = np.asarray(space.expand_ratios)[genes[:, self.e_start : self.e_start + s]]
        if canonical:
            e[~self.active(genes)] = 0.0
        w = genes[:, self.e_start + s : -1]
        r = np.asarray(space.resolutions)[genes[:, -1]]
        return [
            self.space.arch_type(
                d=(int(d0[i]), *d[i].tolist()),
                e=tuple(e[i].tolist()),
                w=tuple(w[i].tolist()),
                r=int(r[i]),
            )
            for i in range(len(genes))
        ]


@functools.lru_cache(maxsize=8)
def resnet_genome(space: ResNetSpace) -> ResNetGenome:
    return ResNetGenome(space)
