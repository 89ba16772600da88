"""Gene matrices: a population of architectures as one ``(N, G)`` integer array, each
gene an index into the choices of one decision of a space. Every space has a genome
(``space.genome()``) that packs, unpacks, encodes and keys its archs this way; what
needs only each gene's number of choices (sampling, crossover, mutation) is shared here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ChoiceGenes"]


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
