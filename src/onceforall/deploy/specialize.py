"""Specialisation: the best sub-network of a trained supernet for each deployment target.

A target is one or more constraints (``latency_ms<=5``, ``macs<=20M``, ``params<=3M``).
For each, evolutionary search over the accuracy predictor finds the sub-network with the
best predicted accuracy that satisfies all of them (SPEC section 4); it is then measured
for real: top-1 after BN recalibration, latency on this device with the latency table's
backend and threads, and, as a baseline, the top-1 of random sub-networks that meet the
same target.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..arch import ArchValue, Space
from ..arch.base import describe_resolutions
from ..errors import check_whole_number
from ..evaluation import SubnetEvaluator
from ..latency.backends import get_backend
from ..latency.base import LatencyModel, LatencyTableError
from ..models import Supernet
from ..predictors import PredictorMismatchError
from ..predictors.base import ArchPredictor
from ..search import (
    Constraint,
    Cost,
    InfeasibleConstraintError,
    evolutionary_search,
    latency_cost,
    macs_cost,
    params_cost,
    parse_constraints,
)
from ..search.constraints import split_target
from .quantized import int8_top1

__all__ = [
    "Specialized",
    "feasible_random",
    "format_specialized",
    "parse_target",
    "search_costs",
    "search_space",
    "specialize",
    "spread_latency_targets",
]


@dataclass
class Specialized:
    """The sub-network chosen for one target, predicted and measured."""

    target: str
    arch: ArchValue
    predicted_accuracy: float
    macs: int
    params: int
    predicted_latency_ms: float | None = None
    measured_accuracy: float | None = None
    measured_latency_ms: float | None = None
    random_accuracies: list[float] = field(default_factory=list)
    search_seconds: float = 0.0
    search_rounds: int = 1  # searches run (more when a measurement exceeded the target)
    meets_target: bool | None = None  # measured latency within every latency limit
    latency_backend: str | None = None  # the runtime the latency was measured on
    int8_accuracy: float | None = None  # test top-1 of its INT8 model (an INT8 backend's)

    @property
    def random_mean_accuracy(self) -> float | None:
        return float(np.mean(self.random_accuracies)) if self.random_accuracies else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "arch": self.arch.to_dict(),
            "predicted_accuracy": self.predicted_accuracy,
            "measured_accuracy": self.measured_accuracy,
            "macs": self.macs,
            "params": self.params,
            "predicted_latency_ms": self.predicted_latency_ms,
            "measured_latency_ms": self.measured_latency_ms,
            "random_accuracies": self.random_accuracies,
            "random_mean_accuracy": self.random_mean_accuracy,
            "search_seconds": self.search_seconds,
            "search_rounds": self.search_rounds,
            "meets_target": self.meets_target,
            "latency_backend": self.latency_backend,
            "int8_accuracy": self.int8_accuracy,
        }


def search_space(
    supernet: Supernet,
    predictor: ArchPredictor | None = None,
    latency_table: LatencyModel | None = None,
) -> Space:
    """The supernet's space at the resolutions the predictor and the latency table both
    cover (the authors' note10 tables have five), so that search only proposes networks
    both can price; the supernet's own space when they cover all of its resolutions."""
    space = supernet.space
    keep = tuple(space.resolutions)
    for what, error, model in (
        ("the accuracy predictor", PredictorMismatchError, predictor),
        ("the latency table", LatencyTableError, latency_table),
    ):
        if model is None:
            continue
        narrowed = tuple(r for r in keep if r in set(model.resolutions))
        if not narrowed:
            raise error(
                f"{what} ({model.describe()}) covers resolutions "
                f"{describe_resolutions(model.resolutions)}; none of "
                f"{describe_resolutions(keep)}, which the supernet runs"
                + ("" if keep == tuple(space.resolutions) else " and the predictor covers")
            )
        keep = narrowed
    return (
        space if keep == tuple(space.resolutions) else dataclasses.replace(space, resolutions=keep)
    )


def search_costs(
    supernet: Supernet,
    latency_table: LatencyModel | None = None,
    space: Space | None = None,
) -> dict[str, Cost]:
    """The costs a target may constrain over ``space`` (default: the supernet's; see
    :func:`search_space`): ``macs``, ``params`` and, with a table, ``latency_ms``."""
    space = supernet.space if space is None else space
    costs = {"macs": macs_cost(supernet, space), "params": params_cost(supernet, space)}
    if latency_table is not None:
        latency_table.check_compatible(supernet)
        missing = sorted(set(space.resolutions) - set(latency_table.resolutions))
        if missing:
            raise LatencyTableError(
                f"the latency table lacks resolutions {missing} of the supernet; extend it "
                "(LatencyTable.build(..., existing=table) or ofa latency-table --extend), "
                "or search the resolutions it covers (search_space)"
            )
        costs["latency_ms"] = latency_cost(latency_table, space)
    return costs


def parse_target(text: str, costs: dict[str, Cost]) -> list[Constraint]:
    """The constraints of one target: ``"latency_ms<=5,macs<=20M"`` is two, joined by
    commas (spaces around them and empty pieces ignored), each parsed against ``costs``;
    a target of none is a :class:`~onceforall.errors.ConfigError`."""
    return parse_constraints(split_target(text), costs)


def spread_latency_targets(
    cost: Cost, n: int = 3, low: float = 0.2, high: float = 0.8
) -> list[str]:
    """``n`` targets ``<name><=v`` evenly placed between fractions ``low`` and ``high`` of
    the range the space can reach (exact minimum and maximum of the additive cost)."""
    lo, hi = cost.minimum()[0], cost.maximum()[0]
    fractions = np.linspace(low, high, n) if n > 1 else np.array([(low + high) / 2])
    return [f"{cost.name}<={lo + f * (hi - lo):.3g}" for f in fractions]


def feasible_random(
    supernet: Supernet,
    constraints: Sequence[Any],
    n: int,
    seed: int = 0,
    max_draws: int = 100_000,
    space: Space | None = None,
) -> list[ArchValue]:
    """Up to ``n`` uniformly random sub-networks (of ``space``, default the supernet's)
    that satisfy every constraint."""
    rng = random.Random(f"ofa-random-baseline-{seed}")
    space = supernet.space if space is None else space
    found: list[ArchValue] = []
    for _ in range(max_draws):
        if len(found) == n:
            break
        arch = space.sample(rng)
        if all(c.cost.of(arch) <= c.limit for c in constraints):
            found.append(arch)
    return found


def _tighter_latency_limit(target: Constraint, searched: Constraint, ratio: float) -> float:
    """The next round's latency limit: the target scaled by the measured/predicted
    ``ratio`` (with 1 % to spare), never looser than this round's, and never below the
    fastest sub-network's predicted latency, so that a table which under-predicts by
    more than the space can absorb still gets the fastest sub-network tried (and
    measured) rather than the first, slower winner kept."""
    fastest = target.cost.minimum()[0] * (1 + 1e-9)  # fp slack: the minimum stays feasible
    return max(min(searched.limit, target.limit / ratio * 0.99), min(fastest, searched.limit))


def _confirmed_ms(measure: Callable[[], float], limits: Sequence[float]) -> float:
    """A winner's latency: measured once and, when that exceeds a limit, measured again,
    keeping the lower. Other work on the machine only ever makes a timing slower, so one
    slow measurement alone must not tighten the limit (and shrink the winner)."""
    first = measure()
    if all(first <= limit for limit in limits):
        return first
    return min(first, measure())


def _search_and_measure(
    supernet: Supernet,
    space: Space,
    predictor: ArchPredictor,
    target: str,
    constraints: list[Constraint],
    *,
    latency_table: LatencyModel | None,
    repeats: int,
    seed: int,
    population: int,
    generations: int,
    max_rounds: int,
) -> Specialized:
    """Search under ``constraints``; measure the winner's latency; while it exceeds a
    latency limit, tighten that limit by the measured/predicted ratio and search again."""
    searched = list(constraints)
    row: Specialized | None = None
    for round_ in range(1, max_rounds + 1):
        try:
            found = evolutionary_search(
                space,
                predictor,
                searched,
                population=population,
                generations=generations,
                seed=seed,
            )
        except InfeasibleConstraintError:
            if row is None:
                raise
            break  # the tightened limit is out of reach: keep the last measured winner
        arch = found.arch
        row = Specialized(
            target=target,
            arch=arch,
            predicted_accuracy=float(found.accuracy),
            macs=supernet.macs(arch),
            params=supernet.params(arch),
            search_seconds=found.wall_time_s + (row.search_seconds if row else 0.0),
            search_rounds=round_,
        )
        latency_limits = [c for c in constraints if c.cost.name == "latency_ms"]
        if latency_table is None or not latency_limits:
            return row
        row.predicted_latency_ms = latency_table.predict(arch)
        if not latency_table.measurable_here:  # another device's table: predicted only
            return row
        row.latency_backend = getattr(latency_table, "backend", None)
        measure = functools.partial(
            latency_table.measure_ms, supernet.extract(arch), arch.r, repeats
        )
        row.measured_latency_ms = _confirmed_ms(measure, [c.limit for c in latency_limits])
        row.meets_target = all(row.measured_latency_ms <= c.limit for c in latency_limits)
        if row.meets_target:
            return row
        ratio = row.measured_latency_ms / row.predicted_latency_ms
        tightened = [
            Constraint(c.cost, _tighter_latency_limit(c, s, ratio))
            if c.cost.name == "latency_ms"
            else s
            for c, s in zip(constraints, searched)
        ]
        if all(t.limit == s.limit for t, s in zip(tightened, searched)):
            break  # already searching at the fastest the space reaches: nothing tighter
        searched = tightened
    assert row is not None
    return row


def specialize(
    supernet: Supernet,
    predictor: ArchPredictor,
    targets: Sequence[str],
    *,
    latency_table: LatencyModel | None = None,
    evaluator: SubnetEvaluator | None = None,
    measure_latency_repeats: int = 30,
    random_baseline: int = 0,
    seed: int = 0,
    population: int = 100,
    generations: int = 500,
    max_rounds: int = 4,
    progress: bool = True,
) -> list[Specialized]:
    """Search, then measure, the best sub-network for each target.

    ``targets`` are strings of constraints joined by commas (``"latency_ms<=5,macs<=20M"``).
    With ``evaluator`` the chosen sub-network's top-1 is measured (and that of
    ``random_baseline`` random sub-networks meeting the same target); with
    ``latency_table`` its latency is measured on this device the way the table was (a
    second time when the first exceeds a limit, the lower kept), and
    when the measurement exceeds a latency limit the table under-predicted: the limit is
    tightened by the measured/predicted ratio and the search repeated (at most
    ``max_rounds`` searches), so what is returned was *measured* within its target
    whenever that is reachable (``meets_target`` says whether it was). A limit is never
    tightened below the fastest sub-network's predicted latency: when even that misses,
    the fastest sub-network is what comes back, with ``meets_target`` False.
    """
    check_whole_number("random_baseline", random_baseline, 0)
    predictor.check_supernet(supernet)
    space = search_space(supernet, predictor, latency_table)
    costs = search_costs(supernet, latency_table, space)
    parsed = [parse_target(target, costs) for target in targets]  # all before any search
    results = []
    bar = tqdm(targets, desc="specialise", disable=not progress, dynamic_ncols=True)
    for target, constraints in zip(bar, parsed):
        row = _search_and_measure(
            supernet,
            space,
            predictor,
            target,
            constraints,
            latency_table=latency_table,
            repeats=measure_latency_repeats,
            seed=seed,
            population=population,
            generations=generations,
            max_rounds=max_rounds,
        )
        if evaluator is not None:
            row.measured_accuracy = evaluator.evaluate_arch(supernet, row.arch)
            if _precision(latency_table) == "int8":  # what ships on that runtime, measured
                row.int8_accuracy = int8_top1(supernet, row.arch, evaluator, latency_table.backend)
            others = feasible_random(supernet, constraints, random_baseline, seed, space=space)
            for other in others:
                row.random_accuracies.append(evaluator.evaluate_arch(supernet, other))
        results.append(row)
    return results


def _precision(table: LatencyModel | None) -> str | None:
    backend = getattr(table, "backend", None)  # the authors' tables name none
    return None if backend is None else get_backend(backend).precision


def format_specialized(space: Any, rows: Sequence[Specialized]) -> str:
    """The table ``ofa specialize`` and ``ofa run`` print: one line per target."""
    from .report import arch_summary, format_table

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    int8 = any(r.int8_accuracy is not None for r in rows)  # an INT8 backend's: side by side
    headers = ["target", "arch", "MMACs", "Mparams", "latency ms", "in target", "pred. top-1"]
    headers += ["top-1", *(["int8 top-1"] if int8 else []), "random top-1"]
    lines = []
    for r in rows:
        latency = r.measured_latency_ms
        line = [
            r.target,
            arch_summary(space, r.arch),
            f"{r.macs / 1e6:.1f}",
            f"{r.params / 1e6:.2f}",
            ms(latency if latency is not None else r.predicted_latency_ms),
            {True: "yes", False: "NO", None: "-"}[r.meets_target],
            pct(r.predicted_accuracy),
            pct(r.measured_accuracy),
            *([pct(r.int8_accuracy)] if int8 else []),
            pct(r.random_mean_accuracy),
        ]
        lines.append(tuple(line))
    text = format_table(tuple(headers), lines)
    gaps = [
        r.predicted_accuracy - r.measured_accuracy for r in rows if r.measured_accuracy is not None
    ]
    if gaps:
        gap = float(np.mean(gaps))
        text += (
            "\npred. top-1 estimates top-1 on held-out training images (the predictor's "
            f"labels), not on the test split: on these {len(gaps)} networks it is "
            f"{abs(gap):.2f} points {'above' if gap >= 0 else 'below'} test top-1 on average"
        )
    return text
