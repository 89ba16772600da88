"""What search, specialisation and ``ofa predict`` need of a latency lookup table.

A table measured here (:class:`~.table.LatencyTable`) and one read from the authors'
files (:mod:`onceforall.compat.latency_tables`) both provide it: the code that uses a
table never asks where it came from. A sub-network's predicted latency is
``fixed_ms(r) + sum of block_ms(r, slot, k, e)`` over the blocks it runs.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import nn

from ..errors import OnceForAllError

__all__ = ["LatencyModel", "LatencyTableError", "MissingResolutionError"]


class LatencyTableError(OnceForAllError, ValueError):
    """A table that does not fit the supernet, backend or device it is used with, or a
    table file that cannot be read as one."""


class MissingResolutionError(LatencyTableError, KeyError):
    """An arch at a resolution the table has no entries for; the message names the
    resolutions it has."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class LatencyModel(Protocol):
    """A per-block latency table of one supernet on one device.

    ``resolutions`` are the input sizes it has entries for; search runs on those of the
    supernet's that it covers. ``measurable_here`` says whether this machine is the
    table's device, so that :meth:`measure_ms` can time a network the way the table was
    timed (specialisation then checks each winner for real); a table of another device
    (the authors' phone tables) is used for its predictions only."""

    resolutions: tuple[int, ...]
    measurable_here: bool

    def describe(self) -> str: ...

    def check_compatible(self, supernet: Any, source: str = "the table") -> None: ...

    def fixed_ms(self, resolution: int) -> float: ...

    def block_ms(
        self, resolution: int, slot: int, kernel_size: int, expand_ratio: int
    ) -> float: ...

    def predict(self, arch: Any) -> float: ...

    def measure_ms(self, model: nn.Module, resolution: int, repeats: int) -> float: ...
