"""Costs of sub-networks: MACs, parameters and table latency (constraints on them are in
:mod:`.constraints`).

Every sub-network of an MBConv supernet is ``stem + active blocks + head``, so its MACs,
its parameter count and a per-layer latency table's prediction are all
``fixed[r] + sum over active slots of table[r, slot, k, e]``. :class:`AdditiveCost` holds
those two arrays and prices a whole :class:`~.population.ArchBatch` with one gather, and
its exact minimum over the space is a small dynamic programme (no sampling).

OFA-ResNet's costs are not additive per choice (a block's channels depend on its
neighbours' width choices); :class:`ArchCost` prices those arch by arch (cached), and
its extremes come from the cost being monotone in every choice.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, Union

import numpy as np

from ..arch import ArchInput, ArchValue, Space
from ..models.costs import total_macs, total_params
from .population import ArchBatch, genome_layout

__all__ = [
    "AdditiveCost",
    "ArchCost",
    "Cost",
    "AdditiveTable",
    "format_value",
    "latency_cost",
    "macs_cost",
    "params_cost",
]


class AdditiveTable(Protocol):
    """What :func:`latency_cost` needs of a latency lookup table."""

    def fixed_ms(self, resolution: int) -> float: ...

    def block_ms(
        self, resolution: int, slot: int, kernel_size: int, expand_ratio: int
    ) -> float: ...


def format_value(value: float, unit: str, with_unit: bool = True) -> str:
    """Human form of a cost: SI suffix for counts (``41.23M MACs``), plain for ms; without
    the unit it reads back through :func:`parse_constraint` (``41.23M``)."""
    text = f"{value:.4g}"
    if unit != "ms":
        for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
            if abs(value) >= scale:
                text = f"{value / scale:.4g}{suffix}"
                break
    if not with_unit or not unit:
        return text
    return f"{text} {unit}"


class AdditiveCost:
    """``cost(arch) = fixed[r] + sum over active slots of table[r, slot, k, e]``.

    ``fixed`` has one entry per resolution of ``space``; ``table`` has shape
    ``(resolutions, slots, kernel sizes, expand ratios)``, indexed like the space's choices.
    """

    def __init__(
        self, name: str, fixed: np.ndarray, table: np.ndarray, unit: str, space: Space
    ) -> None:
        layout = genome_layout(space)
        fixed = np.asarray(fixed, dtype=np.float64)
        table = np.asarray(table, dtype=np.float64)
        if fixed.shape != (len(space.resolutions),) or table.shape != layout.table_shape:
            raise ValueError(
                f"cost {name!r}: fixed must have shape ({len(space.resolutions)},) and table "
                f"{layout.table_shape} for this space; got {fixed.shape} and {table.shape}"
            )
        if not (np.isfinite(fixed).all() and np.isfinite(table).all()):
            raise ValueError(f"cost {name!r} has non-finite entries")
        self.name, self.unit, self.space = name, unit, space
        self.fixed, self.table = fixed, table
        self.padded = np.append(table.ravel(), 0.0)  # the zero absorbs skipped slots

    def __repr__(self) -> str:
        return f"AdditiveCost({self.name!r}, unit={self.unit!r})"

    def of_genes(self, genes: np.ndarray) -> np.ndarray:
        """(N,) cost of a gene matrix of this space (see :mod:`.population`)."""
        layout = genome_layout(self.space)
        return self.padded[layout.block_index(genes)].sum(axis=1) + self.fixed[genes[:, -1]]

    def __call__(self, batch: ArchBatch) -> np.ndarray:
        """(N,) cost of every architecture of ``batch``."""
        if batch.space != self.space:
            raise ValueError(f"cost {self.name!r} belongs to another space than this batch")
        return self.of_genes(batch.genes)

    def of(self, arch: ArchInput) -> float:
        """Cost of one architecture."""
        return float(self(ArchBatch.from_archs(self.space, [arch]))[0])

    def combined(self, others: Sequence[AdditiveCost], weights: Sequence[float]) -> AdditiveCost:
        """``weights[0] * self + sum weights[i] * others[i-1]``: still additive."""
        costs = [self, *others]
        fixed = sum(w * c.fixed for w, c in zip(weights, costs))
        table = sum(w * c.table for w, c in zip(weights, costs))
        return AdditiveCost("weighted", fixed, table, "", self.space)

    def _extreme(self, sign: float) -> tuple[float, ArchValue]:
        """Exact min (sign=1) or max (sign=-1) over the space, with an arch attaining it:
        per resolution, per stage the best depth of the prefix sums of per-slot optima."""
        layout = genome_layout(self.space)
        flat = sign * self.table.reshape(self.table.shape[0], layout.n_slots, -1)
        choice = flat.argmin(axis=2)  # (R, S) best (k, e) per slot
        best_block = flat.min(axis=2)
        total = sign * self.fixed.copy()
        depth_choice = np.zeros((len(total), layout.n_stages), dtype=np.intp)
        for stage in range(layout.n_stages):
            slots = np.asarray(self.space.stage_slots(stage))
            prefix = np.cumsum(best_block[:, slots], axis=1)  # (R, max depth)
            depths = layout.depth_values[stage]
            options = prefix[:, depths - 1]  # (R, depth choices)
            depth_choice[:, stage] = options.argmin(axis=1)
            total += options.min(axis=1)
        r = int(total.argmin())
        n_e = self.table.shape[3]
        genes = np.concatenate([choice[r] // n_e, choice[r] % n_e, depth_choice[r], [r]])
        genes = genes.reshape(1, -1)
        # The value as every check computes it (the same sum, maybe in another order).
        return float(self.of_genes(genes)[0]), ArchBatch(self.space, genes).arch(0)

    def minimum(self) -> tuple[float, ArchValue]:
        """The smallest cost any sub-network reaches (exact), and one that reaches it."""
        return self._extreme(1.0)

    def maximum(self) -> tuple[float, ArchValue]:
        """The largest cost any sub-network reaches (exact), and one that reaches it."""
        return self._extreme(-1.0)


class ArchCost:
    """``cost(arch) = function(arch)``, computed arch by arch and cached by network.

    For spaces whose costs are not additive (OFA-ResNet). The function must be monotone:
    never smaller when any choice (depth, expand ratio, width, resolution) grows, which
    MACs and parameter counts are; the extremes are then the smallest and largest
    sub-network at the extreme resolutions.
    """

    def __init__(self, name: str, function: Callable[[Any], float], unit: str, space: Any) -> None:
        self.name, self.unit, self.space = name, unit, space
        self.function = function
        self._cache: dict[bytes, float] = {}

    def __repr__(self) -> str:
        return f"ArchCost({self.name!r}, unit={self.unit!r})"

    def of_genes(self, genes: np.ndarray) -> np.ndarray:
        """(N,) cost of a gene matrix of this space."""
        layout = genome_layout(self.space)
        keys = layout.network_keys(genes)
        out = np.empty(len(genes))
        missing = [i for i, key in enumerate(keys) if key.tobytes() not in self._cache]
        if missing:
            archs = layout.decode(genes[missing])
            for i, arch in zip(missing, archs):
                self._cache[keys[i].tobytes()] = float(self.function(arch))
        for i, key in enumerate(keys):
            out[i] = self._cache[key.tobytes()]
        return out

    def __call__(self, batch: ArchBatch) -> np.ndarray:
        if batch.space != self.space:
            raise ValueError(f"cost {self.name!r} belongs to another space than this batch")
        return self.of_genes(batch.genes)

    def of(self, arch: Any) -> float:
        return float(self.function(self.space.parse(arch)))

    def combined(self, others: Sequence[ArchCost], weights: Sequence[float]) -> ArchCost:
        costs = [self, *others]
        return ArchCost(
            "weighted",
            lambda arch: sum(w * c.function(arch) for w, c in zip(weights, costs)),
            "",
            self.space,
        )

    def minimum(self) -> tuple[float, Any]:
        """The smallest cost (exact for a monotone cost) and the arch reaching it."""
        arch = self.space.smallest(min(self.space.resolutions))
        return self.of(arch), arch

    def maximum(self) -> tuple[float, Any]:
        arch = self.space.largest(max(self.space.resolutions))
        return self.of(arch), arch


Cost = Union[AdditiveCost, ArchCost]


def _cost_from_parts(supernet, name: str, unit: str, count, space: Space) -> AdditiveCost:
    layout = genome_layout(space)
    fixed = np.zeros(len(space.resolutions))
    table = np.zeros(layout.table_shape)
    for ri, r in enumerate(space.resolutions):
        parts = supernet.cost_parts(r)
        fixed[ri] = count(parts.stem) + count(parts.head)
        for slot in range(layout.n_slots):
            for ki, k in enumerate(space.kernel_sizes):
                for ei, e in enumerate(space.expand_ratios):
                    table[ri, slot, ki, ei] = count(parts.blocks[(slot, k, e)])
    return AdditiveCost(name, fixed, table, unit, space)


def macs_cost(supernet, space: Space | None = None) -> Cost:
    """MACs of every sub-network of ``supernet`` (equal to ``supernet.macs``), over its
    space or ``space`` (the same space at fewer resolutions)."""
    space = supernet.space if space is None else space
    if not supernet.family.additive_costs:
        return ArchCost("macs", supernet.macs, "MACs", space)
    return _cost_from_parts(supernet, "macs", "MACs", total_macs, space)


def params_cost(supernet, space: Space | None = None) -> Cost:
    """Parameters of every sub-network of ``supernet`` (equal to ``supernet.params``),
    over its space or ``space``."""
    space = supernet.space if space is None else space
    if not supernet.family.additive_costs:
        return ArchCost("params", supernet.params, "params", space)
    return _cost_from_parts(supernet, "params", "params", total_params, space)


def latency_cost(table: AdditiveTable, space: Space, name: str = "latency_ms") -> AdditiveCost:
    """Latency predicted by a lookup table (``fixed_ms(r) + sum block_ms(r, slot, k, e)``)."""
    layout = genome_layout(space)
    fixed = np.array([table.fixed_ms(r) for r in space.resolutions], dtype=np.float64)
    blocks = np.zeros(layout.table_shape)
    for ri, r in enumerate(space.resolutions):
        for slot in range(layout.n_slots):
            for ki, k in enumerate(space.kernel_sizes):
                for ei, e in enumerate(space.expand_ratios):
                    blocks[ri, slot, ki, ei] = table.block_ms(r, slot, k, e)
    return AdditiveCost(name, fixed, blocks, "ms", space)
