"""Multi-objective search: the accuracy-vs-cost Pareto front, by NSGA-II (Deb et al. 2002).

Objectives are predicted accuracy (maximised) and one or more additive costs (minimised);
constraints restrict every candidate as in :func:`~.evolution.evolutionary_search`. Fast
non-dominated sorting and crowding distance are whole-array numpy operations.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Sequence, Union

import numpy as np

from ..arch import ArchInput, ArchValue, Space
from ..errors import check_whole_number
from .constraints import Constraint, ConstraintSet
from .evolution import (
    CachedPredictor,
    PredictorLike,
    _feasible_children,
    _random_feasible,
)
from .objectives import AdditiveCost, ArchCost, Cost
from .population import ArchBatch, genome_layout

__all__ = ["ParetoFront", "crowding_distance", "non_dominated_ranks", "pareto_search"]


def non_dominated_ranks(objectives: np.ndarray) -> np.ndarray:
    """(M,) front index of every row of ``objectives`` (M, K), all minimised: 0 for the
    non-dominated rows, 1 for those dominated only by rank-0 rows, and so on."""
    f = np.asarray(objectives, dtype=np.float64)
    le = np.ones((len(f), len(f)), dtype=bool)
    lt = np.zeros((len(f), len(f)), dtype=bool)
    for column in f.T:  # objective by objective: (M, M) planes, no reduction over K
        le &= column[:, None] <= column[None, :]
        lt |= column[:, None] < column[None, :]
    dominates = le & lt  # [i, j]: row i dominates row j
    count = dominates.sum(axis=0)
    ranks = np.full(len(f), -1, dtype=np.intp)
    front = np.flatnonzero(count == 0)
    rank = 0
    while len(front):
        ranks[front] = rank
        count = count - dominates[front].sum(axis=0)
        count[ranks >= 0] = -1
        front = np.flatnonzero(count == 0)
        rank += 1
    return ranks


def crowding_distance(objectives: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """(M,) NSGA-II crowding distance of every row within its front: the normalised
    perimeter of the box spanned by its neighbours; infinite at a front's extremes."""
    f = np.asarray(objectives, dtype=np.float64)
    m = len(f)
    distance = np.zeros(m)
    for k in range(f.shape[1]):
        order = np.lexsort((f[:, k], ranks))
        r, v = ranks[order], f[order, k]
        starts = np.flatnonzero(np.concatenate([[True], r[1:] != r[:-1]]))
        ends = np.append(starts[1:], m) - 1
        span = np.repeat(v[ends] - v[starts], ends - starts + 1)
        gap = np.zeros(m)
        gap[1:-1] = v[2:] - v[:-2]
        with np.errstate(divide="ignore", invalid="ignore"):
            part = np.where(span > 0, gap / span, 0.0)
        part[starts] = np.inf
        part[ends] = np.inf
        distance[order] += part
    return distance


@dataclass(frozen=True)
class ParetoFront:
    """Non-dominated architectures, sorted by the first cost (ascending)."""

    archs: list[ArchValue]
    accuracy: np.ndarray
    costs: dict[str, np.ndarray]
    wall_time_s: float
    evaluated: int
    predicted: int
    batch: ArchBatch = field(repr=False)

    def __len__(self) -> int:
        return len(self.archs)

    def rows(self) -> list[dict]:
        """One dict per member: accuracy, every cost, the arch in the authors' format."""
        return [
            {
                "accuracy": float(self.accuracy[i]),
                **{name: float(values[i]) for name, values in self.costs.items()},
                "arch": self.archs[i].to_dict(),
            }
            for i in range(len(self))
        ]


def _select(objectives: np.ndarray, keep: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """NSGA-II environmental selection of ``n`` rows; rows not in ``keep`` (duplicates)
    only fill up. Returns chosen indices, their ranks and crowding distances."""
    ranks = np.full(len(objectives), np.iinfo(np.intp).max // 2, dtype=np.intp)
    crowd = np.zeros(len(objectives))
    unique = np.flatnonzero(keep)
    ranks[unique] = non_dominated_ranks(objectives[unique])
    crowd[unique] = crowding_distance(objectives[unique], ranks[unique])
    chosen = np.lexsort((-crowd, ranks))[:n]
    return chosen, ranks[chosen], crowd[chosen]


def _tournament(ranks: np.ndarray, crowd: np.ndarray, n: int, rng: np.random.Generator):
    a, b = rng.integers(len(ranks), size=(2, n))
    a_wins = (ranks[a] < ranks[b]) | ((ranks[a] == ranks[b]) & (crowd[a] > crowd[b]))
    return np.where(a_wins, a, b)


def pareto_search(
    space: Space,
    predictor: PredictorLike,
    costs: Union[Cost, Sequence[Cost]],
    constraints: Sequence[Constraint] = (),
    *,
    population: int = 100,
    generations: int = 300,
    mutation_prob: float = 0.1,
    resolution_mutation_prob: float = 0.5,
    seed: int = 0,
    max_tries: int = 100,
    initial: Sequence[ArchInput] = (),
    progress: bool = False,
) -> ParetoFront:
    """NSGA-II over (predicted accuracy, ``costs``): the non-dominated feasible
    architectures of the final population. Children are the uniform crossover of two
    tournament winners, then mutated; infeasible children are redrawn as in
    :func:`~.evolution.evolutionary_search`. Two architectures that run the same network
    count once. ``initial`` archs (feasible ones) seed the first population."""
    if isinstance(costs, (AdditiveCost, ArchCost)):
        costs = [costs]
    costs = list(costs)
    if not costs:
        raise ValueError("pareto_search needs at least one cost to trade accuracy against")
    if any(c.space != space for c in costs):
        raise ValueError("every cost must belong to the search space")
    check_whole_number("population", population, 2)
    check_whole_number("generations", generations, 0)
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    layout = genome_layout(space)
    cset = ConstraintSet(space, constraints)
    objective_costs = ConstraintSet(space, [Constraint(c, np.inf) for c in costs])
    witness = cset.check(rng)
    evaluate = CachedPredictor(predictor, layout)
    probs = layout.group_probabilities(mutation_prob, resolution_mutation_prob)
    all_rows = np.ones(population, dtype=bool)

    def objectives(genes: np.ndarray) -> np.ndarray:
        accuracy = evaluate(genes)  # each network predicted once per search
        return np.column_stack([-accuracy, objective_costs.values(genes).T])

    genes = _random_feasible(layout, cset, population, rng, witness, probs, max_tries)
    if len(initial):
        # Known good architectures (e.g. the winners of constrained searches) join the
        # first population, so the front reaches at least as far as they do.
        seeds = ArchBatch.from_archs(space, initial).genes[:population]
        seeds = seeds[cset.feasible(seeds)]
        genes[: len(seeds)] = seeds
    f = objectives(genes)
    chosen, ranks, crowd = _select(f, layout.first_occurrences(genes), population)
    genes, f = genes[chosen], f[chosen]
    report = max(1, generations // 10)
    for generation in range(1, generations + 1):
        p1 = _tournament(ranks, crowd, population, rng)
        p2 = _tournament(ranks, crowd, population, rng)
        children = _feasible_children(layout, genes, p1, p2, all_rows, probs, cset, rng, max_tries)
        pool = np.concatenate([genes, children])
        pool_f = np.concatenate([f, objectives(children)])
        chosen, ranks, crowd = _select(pool_f, layout.first_occurrences(pool), population)
        genes, f = pool[chosen], pool_f[chosen]
        if progress and generation % report == 0:
            size = int((ranks == 0).sum())
            print(f"generation {generation}/{generations}: front of {size}", file=sys.stderr)

    front = np.flatnonzero(ranks == 0)
    front = front[np.lexsort((f[front, 0], f[front, 1]))]
    batch = ArchBatch(space, genes[front])
    return ParetoFront(
        archs=batch.to_archs(),
        accuracy=-f[front, 0],
        costs={c.name: f[front, 1 + i] for i, c in enumerate(costs)},
        wall_time_s=time.perf_counter() - start,
        evaluated=evaluate.count,
        predicted=evaluate.predicted,
        batch=batch,
    )
