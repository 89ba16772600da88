"""Constraints on a sub-network's costs (``macs<=20M``, ``latency_ms<=5``): parsing,
feasibility of whole populations at once, and an exact up-front check that a search has
something to find (:class:`InfeasibleConstraintError` says by how much it has not)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence, Union

import numpy as np

from ..arch import Space
from ..errors import ConfigError, OnceForAllError
from .objectives import AdditiveCost, Cost, format_value
from .population import ArchBatch, genome_layout

__all__ = [
    "Constraint",
    "ConstraintSet",
    "InfeasibleConstraintError",
    "check_target",
    "parse_constraint",
    "parse_constraints",
    "parse_limit",
    "split_target",
]

# Metric names the cost builders of .objectives know how to build, and what each needs.
KNOWN_METRICS = {
    "macs": "multiply-accumulates (macs_cost)",
    "params": "trainable parameters (params_cost)",
    "latency_ms": "milliseconds from a latency lookup table (latency_cost)",
}
_SUFFIX = {"": 1.0, "K": 1e3, "k": 1e3, "M": 1e6, "G": 1e9}
_PATTERN = re.compile(
    r"\s*([A-Za-z_][A-Za-z0-9_]*)"  # metric
    r"\s*<=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"  # number
    r"\s*([A-Za-z]?)\s*"  # suffix
)
_SYNTAX = (
    "METRIC<=VALUE with an optional K, M or G suffix, e.g. macs<=20M, params<=3.5M, latency_ms<=5"
)


class InfeasibleConstraintError(OnceForAllError, ValueError):
    """No sub-network of the space satisfies the constraint(s); the message says by how
    much and what the space can reach."""


@dataclass(frozen=True, eq=False)
class Constraint:
    """``cost(arch) <= limit``."""

    cost: Cost
    limit: float

    def __str__(self) -> str:
        return f"{self.cost.name}<={format_value(self.limit, self.cost.unit, with_unit=False)}"


CostsLike = Union[Mapping[str, Cost], Sequence[Cost]]


def _as_mapping(costs: CostsLike) -> dict[str, Cost]:
    if isinstance(costs, Mapping):
        return dict(costs)
    return {c.name: c for c in costs}


def parse_constraint(text: str, costs: CostsLike) -> Constraint:
    """Parse ``"macs<=20M"``, ``"params<=3.5M"``, ``"latency_ms<=5"`` against the costs
    available (by name). Raises :class:`ConfigError` (a ValueError) saying what is
    accepted."""
    available = _as_mapping(costs)
    metric, limit = parse_limit(text, available)
    return Constraint(available[metric], limit)


def parse_limit(text: str, metrics: Iterable[str]) -> tuple[str, float]:
    """The metric and the limit of the constraint ``text`` (``"macs<=20M"`` is
    ``("macs", 2e7)``), the metric one of ``metrics``; :class:`ConfigError` otherwise."""
    metrics = set(metrics)
    accepted = ", ".join(sorted(metrics)) or "none"
    match = _PATTERN.fullmatch(text)
    if match is None:
        raise ConfigError(
            f"cannot parse constraint {text!r}: expected {_SYNTAX}; metrics here: {accepted}"
        )
    metric, number, suffix = match.groups()
    if suffix not in _SUFFIX:
        raise ConfigError(
            f"constraint {text!r}: unknown suffix {suffix!r}; accepted suffixes: K (1e3), "
            f"M (1e6), G (1e9), or none"
        )
    if metric not in metrics:
        hint = ""
        if metric in KNOWN_METRICS:
            hint = f" ({metric} needs {KNOWN_METRICS[metric]}, which was not given)"
        raise ConfigError(
            f"constraint {text!r}: unknown metric {metric!r}{hint}; accepted metrics: {accepted}"
        )
    return metric, float(number) * _SUFFIX[suffix]


def parse_constraints(texts: Sequence[str], costs: CostsLike) -> list[Constraint]:
    return [parse_constraint(t, costs) for t in texts]


def split_target(text: str) -> list[str]:
    """The constraints of one target: ``"latency_ms<=5,macs<=20M"`` is two, joined by
    commas (spaces around them and empty pieces ignored); a target of none is a
    :class:`ConfigError`."""
    pieces = [t.strip() for t in text.split(",") if t.strip()]
    if not pieces:
        raise ConfigError(
            f"target {text!r} names no constraint: expected {_SYNTAX}, several joined by commas"
        )
    return pieces


def check_target(text: str) -> None:
    """Raise :class:`ConfigError` unless ``text`` is a target of constraints on metrics
    that can be searched (:data:`KNOWN_METRICS`): its syntax, before there are costs."""
    if not isinstance(text, str):
        raise ConfigError(f"a target is text such as 'macs<=20M', not {text!r}")
    for piece in split_target(text):
        parse_limit(piece, KNOWN_METRICS)


class ConstraintSet:
    """Several constraints of one space, checked together with one gather per batch."""

    def __init__(self, space: Space, constraints: Sequence[Constraint]) -> None:
        for c in constraints:
            if c.cost.space != space:
                raise ValueError(f"constraint {c} belongs to another space than the search")
        self.space = space
        self.constraints = list(constraints)
        self.layout = genome_layout(space)
        self.additive = all(isinstance(c.cost, AdditiveCost) for c in self.constraints)
        if self.constraints:
            self.limits = np.array([c.limit for c in self.constraints])[:, None]
        if self.constraints and self.additive:
            self.padded = np.stack([c.cost.padded for c in self.constraints])
            self.fixed = np.stack([c.cost.fixed for c in self.constraints])

    def values(self, genes: np.ndarray) -> np.ndarray:
        """(C, N) cost of every constraint."""
        if not self.constraints:
            return np.zeros((0, len(genes)))
        if not self.additive:
            return np.stack([c.cost.of_genes(genes) for c in self.constraints])
        index = self.layout.block_index(genes)
        r = genes[:, -1]
        out = np.empty((len(self.constraints), len(genes)))
        for i, (padded, fixed) in enumerate(zip(self.padded, self.fixed)):
            np.add(padded[index].sum(axis=1), fixed[r], out=out[i])
        return out

    def feasible(self, genes: np.ndarray) -> np.ndarray:
        """(N,) bool: every constraint holds."""
        if not self.constraints:
            return np.ones(len(genes), dtype=bool)
        values = self.values(genes)
        if len(values) == 1:
            return values[0] <= self.limits[0, 0]
        return (values <= self.limits).all(axis=0)

    def check(self, rng: np.random.Generator, samples: int = 4096) -> np.ndarray:
        """Genes of at least one feasible architecture, or raise
        :class:`InfeasibleConstraintError`.

        Each constraint alone is decided exactly from its cost's minimum. Together they are
        tried on each cost's minimiser, on the exact minimisers of 64 random weighted sums
        of the costs (each scaled by its range), and on ``samples`` random architectures.
        """
        if not self.constraints:
            return self.layout.sample(1, rng)
        violated, witnesses = [], []
        for c in self.constraints:
            low, arch = c.cost.minimum()
            if low > c.limit:
                violated.append(
                    f"{c} cannot be met: the smallest {c.cost.name} in this space is "
                    f"{format_value(low, c.cost.unit)} ({low:.10g}), reached by {arch}"
                )
            witnesses.append(arch)
        if violated:
            raise InfeasibleConstraintError("; ".join(violated))
        candidates = [ArchBatch.from_archs(self.space, witnesses).genes]
        found = self._first_feasible(candidates[0])
        if found is not None:
            return found
        costs = [c.cost for c in self.constraints]
        spans = np.array([c.maximum()[0] - c.minimum()[0] for c in costs])
        spans[spans <= 0] = 1.0
        weights = rng.dirichlet(np.ones(len(costs)), size=64)
        for w in weights:
            combo = costs[0].combined(costs[1:], w / spans)
            genes = ArchBatch.from_archs(self.space, [combo.minimum()[1]]).genes
            if self.feasible(genes)[0]:
                return genes
            candidates.append(genes)
        sampled = self.layout.sample(samples, rng)
        found = self._first_feasible(sampled)
        if found is not None:
            return found
        candidates.append(sampled)
        pool = np.concatenate(candidates)
        excess = ((self.values(pool) - self.limits) / spans[:, None]).max(axis=0)
        closest = ArchBatch(self.space, pool[[int(excess.argmin())]])
        values = self.values(closest.genes)[:, 0]
        detail = ", ".join(
            f"{c.cost.name}={format_value(v, c.cost.unit)}"
            for c, v in zip(self.constraints, values)
        )
        raise InfeasibleConstraintError(
            f"no sub-network satisfies {', '.join(str(c) for c in self.constraints)} together "
            f"(each alone can be met; tried every cost's minimiser, {len(weights)} minimisers "
            f"of weighted sums and {samples} random sub-networks). Closest found: {detail} "
            f"({closest.arch(0)})"
        )

    def _first_feasible(self, genes: np.ndarray) -> np.ndarray | None:
        ok = np.flatnonzero(self.feasible(genes))
        return genes[ok[:1]] if len(ok) else None
