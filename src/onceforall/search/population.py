"""Populations of architectures as integer arrays, for search loops without per-arch Python.

A population (:class:`ArchBatch`) is one ``(N, G)`` integer matrix of *genes*, each gene an
index into the choices of one decision of the space; the space's genome
(``space.genome()``, see :mod:`onceforall.arch.genes`) says what each column means and
packs, unpacks, encodes and keys archs. Sampling, mutation, crossover, one-hot encoding
and the additive cost lookups (:mod:`.objectives`) are whole-array numpy operations.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from ..arch import ArchValue, Genome, Space
from ..arch.genes import ChoiceGenes
from ..arch.mbconv_genes import GenomeLayout
from ..arch.resnet_genes import ResNetGenome

__all__ = ["ArchBatch", "ChoiceGenes", "GenomeLayout", "ResNetGenome", "genome_layout"]


def genome_layout(space: Space) -> Genome:
    """The (cached) genome of ``space`` (its gene-matrix layout)."""
    return space.genome()


class ArchBatch:
    """A population of architectures of one space, stored as a gene matrix.

    Treat as immutable: operations return new batches. Columns are exposed as
    :attr:`ks_index`, :attr:`e_index`, :attr:`depth_index`, :attr:`resolution_index`.
    """

    __slots__ = ("space", "genes", "layout")

    def __init__(self, space: Space, genes: np.ndarray) -> None:
        layout = genome_layout(space)
        genes = np.asarray(genes, dtype=np.intp)
        if genes.ndim != 2 or genes.shape[1] != layout.n_genes:
            raise ValueError(
                f"genes must have shape (N, {layout.n_genes}) for this space; got {genes.shape}"
            )
        if len(genes) and ((genes < 0).any() or (genes >= layout.cardinality).any()):
            raise ValueError("genes hold an index outside the choices of this space")
        self.space = space
        self.genes = genes
        self.layout = layout

    # --------------------------------------------------------------- columns
    @property
    def ks_index(self) -> np.ndarray:
        return self.genes[:, : self.layout.n_slots]

    @property
    def e_index(self) -> np.ndarray:
        s = self.layout.n_slots
        return self.genes[:, s : 2 * s]

    @property
    def depth_index(self) -> np.ndarray:
        s = self.layout.n_slots
        return self.genes[:, 2 * s : 2 * s + self.layout.n_stages]

    @property
    def resolution_index(self) -> np.ndarray:
        return self.genes[:, -1]

    @property
    def depths(self) -> np.ndarray:
        """(N, T) depth of every stage."""
        return self.layout.depth_values[np.arange(self.layout.n_stages), self.depth_index]

    @property
    def resolutions(self) -> np.ndarray:
        return np.asarray(self.space.resolutions)[self.resolution_index]

    def __len__(self) -> int:
        return len(self.genes)

    def __getitem__(self, index: int | slice | np.ndarray | Sequence[int]) -> ArchBatch:
        """Rows as a new batch (an int gives a one-row batch; use :meth:`arch` for an Arch)."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return ArchBatch(self.space, self.genes[index])

    def __repr__(self) -> str:
        return f"ArchBatch(n={len(self)}, genes={self.layout.n_genes})"

    # ----------------------------------------------------------- conversion
    @classmethod
    def from_archs(cls, space: Space, archs: Iterable[Any]) -> ArchBatch:
        """Validate ``archs`` (arch values, dicts or JSON) and pack them. Skipped slots
        may hold any value (canonical archs hold 0); they are stored as choice 0."""
        return cls(space, genome_layout(space).genes_of(archs))

    def to_archs(self, canonical: bool = False) -> list[Any]:
        """The architectures; with ``canonical``, skipped slots are written as 0 (as the
        space's ``canonical`` does)."""
        return self.layout.decode(self.genes, canonical)

    def arch(self, i: int, canonical: bool = False) -> ArchValue:
        return self[int(i)].to_archs(canonical)[0]

    # ------------------------------------------------------------- features
    def active_mask(self) -> np.ndarray:
        """(N, S) bool: the block slots each architecture runs."""
        return self.layout.active(self.genes)

    def encode(self) -> np.ndarray:
        """(N, D) float32 one-hot features; row i equals ``space.encode(self.arch(i))``."""
        return self.layout.encode(self.genes)

    def unique(self) -> ArchBatch:
        """The first occurrence of every distinct network (skipped slots ignored)."""
        return ArchBatch(self.space, self.genes[self.layout.first_occurrences(self.genes)])

    # ------------------------------------------------------------ variation
    @classmethod
    def sample(cls, space: Space, n: int, rng: np.random.Generator) -> ArchBatch:
        """``n`` uniformly random architectures (the distribution of ``space.sample``)."""
        return cls(space, genome_layout(space).sample(n, rng))

    def mutate(
        self, rng: np.random.Generator, prob: float = 0.1, resolution_prob: float | None = None
    ) -> ArchBatch:
        """Redraw each block's (k, e) and each stage depth with probability ``prob``, the
        resolution with ``resolution_prob`` (default ``prob``)."""
        probs = self.layout.group_probabilities(
            prob, prob if resolution_prob is None else resolution_prob
        )
        return ArchBatch(self.space, self.layout.mutate(self.genes, rng, probs))

    def crossover(self, other: ArchBatch, rng: np.random.Generator) -> ArchBatch:
        """Row-wise uniform crossover with ``other`` (same length): every gene from either
        parent with probability 1/2."""
        if other.space != self.space or len(other) != len(self):
            raise ValueError("crossover needs two batches of the same space and length")
        return ArchBatch(self.space, self.layout.crossover(self.genes, other.genes, rng))
