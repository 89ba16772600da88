"""Constrained evolutionary search (the paper's algorithm) and its random-search baseline.

The algorithm is the authors' ``EvolutionFinder``: a population of feasible random
architectures; every generation keeps the top ``parent_ratio`` as parents, makes
``mutation_ratio`` of a new population by mutating random parents and the rest by
crossover of two random parents, resampling each child until it satisfies every
constraint, and keeps parents and children as the next pool. Here a whole generation is a
handful of numpy operations on gene matrices (:mod:`.population`), costs are table
lookups (:mod:`.objectives`) and the predictor sees each distinct network once.

One change from theirs: the parents are the best *distinct* networks. Taken by rank
alone, copies of the best network fill the parent pool (on their tutorial's problem all
25 parents are one network by the end of the run) and the search stops exploring; with
distinct parents it finds better networks from the same budget (``docs/benchmarks.md``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..arch import ArchValue, Space
from ..errors import check_whole_number
from ..predictors.base import ArchPredictor, GenePredictor
from .constraints import Constraint, ConstraintSet
from .objectives import Cost
from .population import ArchBatch, GenomeLayout, genome_layout

__all__ = [
    "CachedPredictor",
    "Predictor",
    "SearchResult",
    "as_predictor",
    "evolutionary_search",
    "gene_predictor",
    "random_search",
    "torch_predictor",
]

Predictor = Callable[[np.ndarray], np.ndarray]
PredictorLike = Union[ArchPredictor, Predictor, nn.Module]


def torch_predictor(module: nn.Module) -> Predictor:
    """Wrap a torch accuracy predictor (features ``(N, D)`` -> ``(N,)`` or ``(N, 1)``) as a
    numpy callable: eval mode, no autograd, float32 in, float64 out."""
    module.eval()
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    on_cpu = device.type == "cpu"

    def predict(features: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        with torch.inference_mode():
            y = module(x if on_cpu else x.to(device))
        return y.reshape(-1).cpu().numpy().astype(np.float64)

    return predict


def as_predictor(predictor: PredictorLike, space: Space) -> Predictor:
    """A numpy callable from a torch module or a callable. A module with a ``space``
    attribute must encode the same way as ``space``."""
    if isinstance(predictor, nn.Module):
        own = getattr(predictor, "space", None)
        if own is not None and own.encoding_layout() != space.encoding_layout():
            raise ValueError(
                "the predictor was trained on another encoding than this search space: "
                f"{own.encoding_layout()} vs {space.encoding_layout()}"
            )
        return torch_predictor(predictor)
    if not callable(predictor):
        raise TypeError(f"predictor must be callable or an nn.Module, got {type(predictor)}")
    return predictor


def gene_predictor(predictor: PredictorLike, space: Space) -> GenePredictor:
    """Predicted accuracy of gene rows of ``space``: an :class:`ArchPredictor` says how
    itself; a module or callable on the space's one-hot features is fed those."""
    if isinstance(predictor, ArchPredictor):
        return predictor.gene_predictor(space)
    features = as_predictor(predictor, space)
    layout = genome_layout(space)
    return lambda genes: features(layout.encode(genes))


class CachedPredictor:
    """Encode, predict, check the shape once, count. Each distinct network is sent to the
    predictor once per search: its accuracy is remembered (by network key), so children
    that repeat a parent, a sibling or any network seen before cost a lookup (late in a
    search most do). ``count`` counts candidates, ``predicted`` the rows the predictor
    saw."""

    def __init__(self, predictor: PredictorLike, layout: GenomeLayout) -> None:
        self.predict = gene_predictor(predictor, layout.space)
        self.layout = layout
        self.count = 0
        self.predicted = 0
        self.seen: dict[bytes, float] = {}

    def _predict(self, genes: np.ndarray) -> np.ndarray:
        out = np.asarray(self.predict(genes), dtype=np.float64).reshape(-1)
        if out.shape != (len(genes),):
            raise ValueError(
                f"the predictor returned shape {out.shape} for {len(genes)} architectures; "
                "expected one accuracy per architecture"
            )
        self.predicted += len(genes)
        return out

    def __call__(self, genes: np.ndarray) -> np.ndarray:
        return self.keyed(genes)[0]

    def keyed(self, genes: np.ndarray) -> tuple[np.ndarray, list[bytes]]:
        """Predicted accuracy of every row, and every row's network key."""
        self.count += len(genes)
        names = self.layout.network_keys(genes).tolist()  # bytes, one per row
        seen = self.seen
        accuracy = np.fromiter((seen.get(name, np.nan) for name in names), np.float64, len(names))
        missing = np.flatnonzero(np.isnan(accuracy))
        if len(missing):
            first = {}  # each new network's first row
            for i in missing.tolist():
                first.setdefault(names[i], i)
            rows = np.fromiter(first.values(), np.intp, len(first))
            seen.update(zip(first, self._predict(genes[rows]).tolist()))
            accuracy[missing] = [seen[names[i]] for i in missing.tolist()]
        return accuracy, names


def _distinct_best(keys: Sequence[bytes], acc: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` most accurate rows, one per distinct network (``keys``: each
    row's network key) where there are ``n`` distinct ones (best first): copies of one
    network would crowd the parents otherwise, and the search would converge on it."""
    order = np.argsort(-acc, kind="stable")
    picked, names = [], set()
    for row in order.tolist():
        if keys[row] not in names:
            names.add(keys[row])
            picked.append(row)
            if len(picked) == n:
                return np.array(picked, dtype=np.intp)
    return order[:n]


@dataclass(frozen=True)
class SearchResult:
    """Outcome of a search: the best architecture, its predicted accuracy and its costs
    (of every constraint, and ``extra_costs``). ``history[g]`` is the best predicted
    accuracy after generation ``g`` (``history[0]``: the initial population; for random
    search, after every ``population`` evaluated architectures). ``evaluated`` counts
    candidates, ``predicted`` the distinct ones the predictor actually ran on.
    ``population`` is the final pool, best first, with ``population_accuracy``."""

    arch: ArchValue
    accuracy: float
    costs: dict[str, float]
    history: np.ndarray
    wall_time_s: float
    evaluated: int
    predicted: int
    population: ArchBatch = field(repr=False)
    population_accuracy: np.ndarray = field(repr=False)


def _feasible_children(
    layout: GenomeLayout,
    parents: np.ndarray,
    p1: np.ndarray,
    p2: np.ndarray,
    mutate_rows: np.ndarray,
    probs: np.ndarray,
    cset: ConstraintSet,
    rng: np.random.Generator,
    max_tries: int,
) -> np.ndarray:
    """Child i = crossover(parents[p1[i]], parents[p2[i]]), then mutated where
    ``mutate_rows[i]`` (p2 = p1 makes a pure mutation); every child feasible.

    An infeasible child is redrawn from the same parents, up to ``max_tries`` draws in
    all, then replaced by its (feasible) parent ``p1``. Redraws are made in rounds, 4, 16,
    ... per remaining child at once, keeping each child's first feasible draw: the same
    distribution as redrawing one at a time, in a few numpy calls."""
    children = layout.offspring(parents[p1], parents[p2], rng, probs, mutate_rows)
    ok = cset.feasible(children)
    if ok.all():
        return children
    todo = np.flatnonzero(~ok)
    tries, repeat = 1, 4
    while len(todo) and tries < max_tries:
        repeat = min(repeat, max_tries - tries)
        rows = np.repeat(todo, repeat)
        candidates = layout.offspring(
            parents[p1[rows]], parents[p2[rows]], rng, probs, mutate_rows[rows]
        )
        ok = cset.feasible(candidates).reshape(len(todo), repeat)
        done = ok.any(axis=1)
        pick = np.flatnonzero(done) * repeat + ok[done].argmax(axis=1)
        children[todo[done]] = candidates[pick]
        todo = todo[~done]
        tries += repeat
        repeat *= 4
    children[todo] = parents[p1[todo]]
    return children


def _random_feasible(
    layout: GenomeLayout,
    cset: ConstraintSet,
    n: int,
    rng: np.random.Generator,
    witness: np.ndarray,
    probs: np.ndarray,
    max_tries: int,
) -> np.ndarray:
    """``n`` feasible architectures: uniform samples that pass (rejection sampling, a
    bounded number of rounds), topped up with feasible mutants of those found (or of the
    ``witness``) when the constraints are so tight that few random samples pass."""
    found, count = [], 0
    for _ in range(50):
        draws = layout.sample(max(4 * n, 256), rng)
        ok = draws[cset.feasible(draws)]
        found.append(ok)
        count += len(ok)
        if count >= n:
            return np.concatenate(found)[:n]
    found = np.concatenate(found)
    pool = found if len(found) else witness
    p1 = rng.integers(len(pool), size=n - len(found))
    rows = np.ones(len(p1), dtype=bool)
    extra = _feasible_children(layout, pool, p1, p1, rows, probs, cset, rng, max_tries)
    return np.concatenate([found, extra])


def _result(
    space: Space,
    genes: np.ndarray,
    acc: np.ndarray,
    history: Sequence[float],
    cset: ConstraintSet,
    extra_costs: Sequence[Cost],
    start: float,
    evaluate: CachedPredictor,
) -> SearchResult:
    order = np.argsort(-acc, kind="stable")
    genes, acc = genes[order], acc[order]
    best = genes[:1]
    costs = {c.cost.name: float(v) for c, v in zip(cset.constraints, cset.values(best)[:, 0])}
    costs.update({c.name: float(c.of_genes(best)[0]) for c in extra_costs})
    batch = ArchBatch(space, genes)
    return SearchResult(
        arch=batch.arch(0),
        accuracy=float(acc[0]),
        costs=costs,
        history=np.asarray(history, dtype=np.float64),
        wall_time_s=time.perf_counter() - start,
        evaluated=evaluate.count,
        predicted=evaluate.predicted,
        population=batch,
        population_accuracy=acc,
    )


def evolutionary_search(
    space: Space,
    predictor: PredictorLike,
    constraints: Sequence[Constraint] = (),
    *,
    population: int = 100,
    generations: int = 500,
    parent_ratio: float = 0.25,
    mutation_ratio: float = 0.5,
    mutation_prob: float = 0.1,
    resolution_mutation_prob: float = 0.5,
    seed: int = 0,
    max_tries: int = 100,
    extra_costs: Sequence[Cost] = (),
    progress: bool = False,
) -> SearchResult:
    """The paper's constrained evolutionary search; every architecture it returns (best
    and final population) satisfies every constraint.

    ``mutation_prob`` applies to each block's (kernel, expand) and each stage depth,
    ``resolution_mutation_prob`` to the resolution (0.5 in the paper and the authors'
    ``ofa.nas`` finder; their tutorial finder uses ``mutation_prob`` for it). A child
    still infeasible after ``max_tries`` redraws is replaced by its (feasible) parent.
    Raises :class:`~.objectives.InfeasibleConstraintError` when nothing can satisfy the
    constraints. ``extra_costs`` are only reported for the best architecture.
    """
    check_whole_number("population", population, 2)
    check_whole_number("generations", generations, 0)
    if not (0 < parent_ratio <= 1 and 0 <= mutation_ratio <= 1):
        raise ValueError("parent_ratio must be in (0, 1] and mutation_ratio in [0, 1]")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    layout = genome_layout(space)
    cset = ConstraintSet(space, constraints)
    witness = cset.check(rng)
    evaluate = CachedPredictor(predictor, layout)
    probs = layout.group_probabilities(mutation_prob, resolution_mutation_prob)
    n_parents = max(1, int(round(parent_ratio * population)))
    n_mutants = int(round(mutation_ratio * population))
    mutate_rows = np.arange(population) < n_mutants

    genes = _random_feasible(layout, cset, population, rng, witness, probs, max_tries)
    acc, keys = evaluate.keyed(genes)
    history = [float(acc.max())]
    report = max(1, generations // 10)
    for generation in range(1, generations + 1):
        keep = _distinct_best(keys, acc, n_parents)
        parents, parent_acc = genes[keep], acc[keep]
        p1 = rng.integers(n_parents, size=population)
        p2 = np.where(mutate_rows, p1, rng.integers(n_parents, size=population))
        children = _feasible_children(
            layout, parents, p1, p2, mutate_rows, probs, cset, rng, max_tries
        )
        child_acc, child_keys = evaluate.keyed(children)
        genes = np.concatenate([parents, children])
        acc = np.concatenate([parent_acc, child_acc])
        keys = [keys[i] for i in keep.tolist()] + child_keys
        history.append(max(history[-1], float(child_acc.max())))
        if progress and generation % report == 0:
            print(f"generation {generation}/{generations}: best {history[-1]:.5f}", file=sys.stderr)
    return _result(space, genes, acc, history, cset, extra_costs, start, evaluate)


def random_search(
    space: Space,
    predictor: PredictorLike,
    constraints: Sequence[Constraint] = (),
    *,
    population: int = 100,
    generations: int = 500,
    samples: int | None = None,
    seed: int = 0,
    batch_size: int = 1000,
    extra_costs: Sequence[Cost] = (),
    progress: bool = False,
) -> SearchResult:
    """Uniform random feasible architectures, as many as :func:`evolutionary_search`
    evaluates with the same ``population`` and ``generations`` (or ``samples``); the
    baseline evolution should beat. Sampling is by rejection, at most 50 draws per
    evaluated architecture (fewer are evaluated when constraints are that tight)."""
    check_whole_number("population", population, 1)
    check_whole_number("generations", generations, 0)
    start = time.perf_counter()
    budget = samples if samples is not None else population * (generations + 1)
    rng = np.random.default_rng(seed)
    layout = genome_layout(space)
    cset = ConstraintSet(space, constraints)
    witness = cset.check(rng)
    evaluate = CachedPredictor(predictor, layout)
    top_genes = np.empty((0, layout.n_genes), dtype=np.intp)
    top_acc = np.empty(0)
    all_acc, draws = [], 0
    while evaluate.count < budget and draws < 50 * budget:
        draw = layout.sample(batch_size, rng)
        draws += batch_size
        draw = draw[cset.feasible(draw)][: budget - evaluate.count]
        if len(draw) == 0:
            continue
        acc = evaluate(draw)
        all_acc.append(acc)
        top_genes = np.concatenate([top_genes, draw])
        top_acc = np.concatenate([top_acc, acc])
        keep = np.argsort(-top_acc, kind="stable")[:population]
        top_genes, top_acc = top_genes[keep], top_acc[keep]
        if progress:
            print(f"evaluated {evaluate.count}/{budget}: best {top_acc[0]:.5f}", file=sys.stderr)
    if evaluate.count == 0:  # nothing random passed: fall back to the known feasible one
        top_genes, top_acc = witness, evaluate(witness)
        all_acc.append(top_acc)
    running = np.maximum.accumulate(np.concatenate(all_acc))
    marks = list(range(population - 1, len(running), population))
    if not marks or marks[-1] != len(running) - 1:
        marks.append(len(running) - 1)
    history = running[marks]
    return _result(space, top_genes, top_acc, history, cset, extra_costs, start, evaluate)
