"""The run's metrics log: one JSON line per record in ``RUN_DIR/metrics.jsonl``, mirrored
to TensorBoard event files in ``RUN_DIR/tensorboard`` when ``tensorboard`` is installed;
and :class:`TimedIterator`, which measures how long training waits for its data."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

from ..storage.run_layout import RunLayout

__all__ = ["MetricsLog", "TimedIterator", "tensorboard_scalars"]

_T = TypeVar("_T")


class TimedIterator(Iterator[_T]):
    """Iterates ``iterable`` and adds the time spent inside each ``next`` to ``waited``:
    over a data loader, the seconds the training loop sat idle waiting for a batch (the
    loader is the bottleneck where ``waited`` is a large part of the epoch)."""

    def __init__(self, iterable: Iterable[_T]) -> None:
        self._iterator = iter(iterable)
        self.waited = 0.0

    def __next__(self) -> _T:
        start = time.perf_counter()
        try:
            return next(self._iterator)
        finally:
            self.waited += time.perf_counter() - start


def tensorboard_scalars(record: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """The TensorBoard scalars of ``record``: each numeric field as ``<type>/<field>``, and
    each number of a field that holds a dict (the test top-1 per sub-network) as
    ``<type>/<field>/<key>``. ``time`` and ``global_step`` are not scalars: the step is
    the x axis."""
    kind = record.get("type", "x")
    for key, value in record.items():
        if key in ("time", "global_step"):
            continue
        if isinstance(value, (int, float)):
            yield f"{kind}/{key}", value
        elif isinstance(value, dict):
            for inner, number in value.items():
                if isinstance(number, (int, float)):
                    yield f"{kind}/{key}/{inner}", number


class MetricsLog:
    """Appends records on the process that owns the run directory (``enabled``); other
    distributed ranks hold a disabled log that writes nothing."""

    def __init__(self, run_dir: str | Path, enabled: bool = True) -> None:
        self.layout = RunLayout(run_dir)
        self.run_dir = self.layout.root
        self.path = self.layout.metrics
        self.enabled = enabled
        self._tensorboard: Any = None  # None: not opened; False: tensorboard not installed

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` with the current time; its :func:`tensorboard_scalars` also
        go to TensorBoard at the record's ``global_step`` (0 where it has none)."""
        if not self.enabled:
            return
        record = {"time": time.time(), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        writer = self._writer()
        if writer:
            step = record.get("global_step", 0)
            for tag, value in tensorboard_scalars(record):
                writer.add_scalar(tag, value, step)

    def close(self) -> None:
        """Flush and close the TensorBoard event file; a later :meth:`write` opens a new
        one. The JSON log needs no closing (each record is appended and closed)."""
        if self._tensorboard:
            self._tensorboard.close()
        if self._tensorboard is not False:
            self._tensorboard = None

    def _writer(self) -> Any:
        if self._tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is not installed
                self._tensorboard = False
            else:
                self._tensorboard = SummaryWriter(str(self.layout.tensorboard))
        return self._tensorboard
