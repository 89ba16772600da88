"""The genome of MBConv spaces (see :mod:`.genes`)::

    [ kernel index per slot | expand index per slot | depth index per stage | resolution ]

Depth genes index the depths allowed in their stage (a stage with fewer slots may allow
fewer depths). Sampling, mutation, crossover, one-hot encoding and the additive cost
lookups of search are all whole-array numpy operations on these matrices.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import numpy as np

from .genes import ChoiceGenes

if TYPE_CHECKING:
    from .mbconv import ArchLike, MBConvArch, MBConvSpace

__all__ = ["GenomeLayout", "mbconv_genome"]


@dataclass(frozen=True, eq=False)
class GenomeLayout(ChoiceGenes):
    """Index tables of an MBConv space, computed once (``space.genome()``).
    A block's (k, e) genes share one mutation group, as in the authors' finder."""

    space: MBConvSpace
    n_slots: int
    n_stages: int
    slot_stage: np.ndarray  # (S,) stage of each slot
    slot_pos: np.ndarray  # (S,) position of each slot inside its stage
    depth_values: np.ndarray  # (T, max choices) depth of each depth index, padded
    cardinality: np.ndarray  # (G,) number of choices of each gene
    cardinality_f32: np.ndarray  # the same as float32, for drawing choices
    gene_group: np.ndarray  # (G,) mutation group: slot s (k and e), S + stage, S + T (r)
    encode_offset: np.ndarray  # (G,) one-hot column of choice 0 of each gene
    block_offset: np.ndarray  # (S,) flat index of (r=0, slot, k=0, e=0) in a cost table
    active_lut: np.ndarray  # (T * max depth choices, max slots) active slots per depth gene
    active_cols: np.ndarray | None  # columns of the (T * max slots) lookup that are slots
    stage_lut_offset: np.ndarray  # (T,) row of stage t's first depth choice in active_lut
    table_shape: tuple[int, int, int, int]  # per-block cost table: (R, S, kernels, expands)
    table_size: int  # its number of entries (index of the padding zero)

    def active(self, genes: np.ndarray) -> np.ndarray:
        """(N, S) bool: which block slots run (the first ``d`` of every stage)."""
        s, t = self.n_slots, self.n_stages
        rows = genes[:, 2 * s : 2 * s + t] + self.stage_lut_offset
        active = self.active_lut[rows].reshape(len(genes), t * self.active_lut.shape[1])
        return active if self.active_cols is None else active[:, self.active_cols]

    def block_index(self, genes: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """(N, S) flat index into a raveled cost table of :attr:`table_shape` for every
        active slot; skipped slots point one past the end (callers pad a zero there)."""
        s = self.n_slots
        n_e = self.table_shape[3]
        flat = genes[:, :s] * n_e
        flat += genes[:, s : 2 * s]
        flat += self.block_offset
        flat += genes[:, -1:] * (s * self.table_shape[2] * n_e)
        if active is None:
            active = self.active(genes)
        return np.where(active, flat, self.table_size)

    def encode(self, genes: np.ndarray) -> np.ndarray:
        """(N, D) float32 one-hot features, row by row equal to ``space.encode``."""
        n, s = len(genes), self.n_slots
        width = self.space.encoding_size + 1  # one spare column absorbs skipped slots
        inactive = ~self.active(genes)
        cols = np.empty((n, 2 * s + 1), dtype=np.intp)
        np.add(genes[:, : 2 * s], self.encode_offset[: 2 * s], out=cols[:, : 2 * s])
        cols[:, :s][inactive] = width - 1
        cols[:, s : 2 * s][inactive] = width - 1
        cols[:, -1] = genes[:, -1]
        cols += (np.arange(n) * width)[:, None]
        out = np.zeros(n * width, dtype=np.float32)
        out[cols.ravel()] = 1.0
        return out.reshape(n, width)[:, :-1]

    def network_keys(self, genes: np.ndarray) -> np.ndarray:
        """(N,) opaque keys, equal exactly when two rows run the same network (skipped
        slots ignored): the genes, block genes of skipped slots zeroed, as raw bytes."""
        n, s = len(genes), self.n_slots
        blocks = (genes[:, : 2 * s].reshape(n, 2, s) + 1) * self.active(genes)[:, None, :]
        keys = np.concatenate([blocks.reshape(n, 2 * s), genes[:, 2 * s :]], axis=1)
        keys = np.ascontiguousarray(keys, dtype=np.int8)  # every gene has <= 126 choices
        return keys.view(np.dtype((np.void, keys.shape[1]))).ravel()

    def genes_of(self, archs: Iterable[ArchLike]) -> np.ndarray:
        """Gene rows of ``archs`` (validated by the space)."""
        space = self.space
        k_id = {k: i for i, k in enumerate(space.kernel_sizes)}
        e_id = {e: i for i, e in enumerate(space.expand_ratios)}
        r_id = {r: i for i, r in enumerate(space.resolutions)}
        n_depths = self.cardinality[2 * self.n_slots : -1]
        d_id = [
            {int(d): i for i, d in enumerate(row[:n])}
            for row, n in zip(self.depth_values.tolist(), n_depths)
        ]
        rows = []
        for raw in archs:
            arch = space.parse(raw)
            rows.append(
                [k_id.get(k, 0) for k in arch.ks]
                + [e_id.get(e, 0) for e in arch.e]
                + [d_id[i][d] for i, d in enumerate(arch.d)]
                + [r_id[arch.r]]
            )
        return np.array(rows, dtype=np.intp).reshape(len(rows), self.n_genes)

    def decode(self, genes: np.ndarray, canonical: bool = False) -> list[MBConvArch]:
        """The arch of every row (skipped slots written as 0 with ``canonical``)."""
        s, t = self.n_slots, self.n_stages
        ks = np.asarray(self.space.kernel_sizes)[genes[:, :s]]
        e = np.asarray(self.space.expand_ratios)[genes[:, s : 2 * s]]
        if canonical:
            inactive = ~self.active(genes)
            ks[inactive] = 0
            e[inactive] = 0
        d = self.depth_values[np.arange(t), genes[:, 2 * s : 2 * s + t]]
        r = np.asarray(self.space.resolutions)[genes[:, -1]]
        return [
            self.space.arch_type(
                ks=tuple(ks[i].tolist()),
                e=tuple(e[i].tolist()),
                d=tuple(d[i].tolist()),
                r=int(r[i]),
            )
            for i in range(len(genes))
        ]


@functools.lru_cache(maxsize=32)
def mbconv_genome(space: MBConvSpace) -> GenomeLayout:
    """The index tables of an MBConv ``space``."""
    s, t = space.num_slots, space.num_stages
    n_k, n_e, n_r = len(space.kernel_sizes), len(space.expand_ratios), len(space.resolutions)
    slot_stage = np.concatenate([np.full(m, i) for i, m in enumerate(space.stage_max_depths)])
    slot_pos = np.concatenate([np.arange(m) for m in space.stage_max_depths])
    stage_depths = [list(space.stage_depth_choices(i)) for i in range(t)]
    widest = max(len(c) for c in stage_depths)
    depth_values = np.array([c + [c[-1]] * (widest - len(c)) for c in stage_depths])
    cardinality = np.concatenate(
        [np.full(s, n_k), np.full(s, n_e), [len(c) for c in stage_depths], [n_r]]
    )
    if cardinality.max() > 126:  # keys are int8 and choices are drawn in float32
        raise ValueError("search supports at most 126 choices per decision")
    slots = np.arange(s)
    gene_group = np.concatenate([slots, slots, s + np.arange(t), [s + t]])
    k_base = n_r
    e_base = k_base + s * n_k
    encode_offset = np.concatenate(
        [k_base + slots * n_k, e_base + slots * n_e, np.zeros(t, dtype=int), [0]]
    )
    widest_stage = max(space.stage_max_depths)
    active_lut = np.zeros((t * widest, widest_stage), dtype=bool)
    for stage, choices in enumerate(stage_depths):
        for j, depth in enumerate(choices):
            active_lut[stage * widest + j, :depth] = True
    valid = (np.arange(widest_stage) < np.array(space.stage_max_depths)[:, None]).ravel()
    table_shape = (n_r, s, n_k, n_e)
    return GenomeLayout(
        space=space,
        n_slots=s,
        n_stages=t,
        slot_stage=slot_stage.astype(np.intp),
        slot_pos=slot_pos.astype(np.intp),
        depth_values=depth_values.astype(np.intp),
        cardinality=cardinality.astype(np.intp),
        cardinality_f32=cardinality.astype(np.float32),
        gene_group=gene_group.astype(np.intp),
        encode_offset=encode_offset.astype(np.intp),
        block_offset=(slots * n_k * n_e).astype(np.intp),
        active_lut=active_lut,
        active_cols=None if valid.all() else np.flatnonzero(valid),
        stage_lut_offset=(np.arange(t) * widest).astype(np.intp),
        table_shape=table_shape,
        table_size=int(np.prod(table_shape)),
    )
