"""Gene matrices shared by every space's search: variation that needs only each gene's
number of choices (:class:`ChoiceGenes`), and the genome of OFA-ResNet spaces
(:class:`ResNetGenome`). The vectorised MBConv genome is :class:`~.population.GenomeLayout`.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable

import numpy as np

from ..arch import ResNetArch, ResNetSpace

__all__ = ["ChoiceGenes", "ResNetGenome", "resnet_genome"]


class ChoiceGenes:
    """Sampling, crossover and mutation of gene matrices: what needs only each gene's
    number of choices (``cardinality``) and mutation group (``gene_group``, the last
    group being the resolution). Shared by every space's genome layout."""

    cardinality: np.ndarray
    cardinality_f32: np.ndarray
    gene_group: np.ndarray

    @property
    def n_genes(self) -> int:
        return len(self.cardinality)

    @property
    def n_groups(self) -> int:
        return int(self.gene_group.max()) + 1

    def group_probabilities(self, prob: float, resolution_prob: float) -> np.ndarray:
        """Mutation probability of each group: ``prob``, and ``resolution_prob`` for the
        resolution (the last group)."""
        probs = np.full(self.n_groups, float(prob))
        probs[-1] = float(resolution_prob)
        return probs

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` uniformly random genomes (each choice independently uniform)."""
        return (rng.random((n, self.n_genes)) * self.cardinality).astype(np.intp)

    def offspring(
        self,
        a: np.ndarray,
        b: np.ndarray,
        rng: np.random.Generator,
        group_probs: np.ndarray,
        mutate_rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Uniform crossover of ``a`` and ``b`` (every gene from either parent with
        probability 1/2; pass ``b = a`` for none), then mutation: each group redrawn with
        its probability, only in ``mutate_rows`` (bool, N) when given. A redraw may land on
        the same choice, as in the authors' finder.

        One uniform ``u`` per gene serves both: ``u < 1/2`` keeps parent ``a`` and
        ``floor(u * choices)`` is the redrawn choice. A redrawn gene discards the parent
        pick, so every output gene still has the right distribution."""
        n = len(a)
        u = rng.random((n, self.n_genes + self.n_groups), dtype=np.float32)
        gene_u = u[:, : self.n_genes]
        hit = u[:, self.n_genes :] < group_probs
        if mutate_rows is not None:
            hit &= mutate_rows[:, None]
        child = np.where(gene_u < 0.5, a, b)
        # float32 u <= 1 - 2**-24, so u * choices stays below choices (<= 126 of them).
        fresh = (gene_u * self.cardinality_f32).astype(np.intp)
        return np.where(hit[:, self.gene_group], fresh, child)

    def mutate(
        self,
        genes: np.ndarray,
        rng: np.random.Generator,
        group_probs: np.ndarray,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Copies of ``genes`` with each group redrawn with its probability (see
        :meth:`offspring`)."""
        return self.offspring(genes, genes, rng, group_probs, rows)

    def crossover(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Uniform crossover: every gene from either parent with probability 1/2."""
        return self.offspring(a, b, rng, np.zeros(self.n_groups))

    def first_occurrences(self, genes: np.ndarray) -> np.ndarray:
        """(N,) bool: True for the first row of every distinct network."""
        _, first = np.unique(self.network_keys(genes), return_index=True)
        keep = np.zeros(len(genes), dtype=bool)
        keep[first] = True
        return keep

    def network_keys(self, genes: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


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
            ResNetArch(
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
