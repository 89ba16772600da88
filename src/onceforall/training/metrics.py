"""The run's metrics log: one JSON line per record in ``RUN_DIR/metrics.jsonl``, mirrored
to TensorBoard event files in ``RUN_DIR/tensorboard`` when ``tensorboard`` is installed;
and :class:`TimedIterator`, which measures how long training waits for its data."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

__all__ = ["MetricsLog", "TimedIterator"]

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


class MetricsLog:
    """Appends records on the process that owns the run directory (``enabled``); other
    distributed ranks hold a disabled log that writes nothing."""

    def __init__(self, run_dir: str | Path, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.enabled = enabled
        self._tensorboard: Any = None  # None: not tried yet; False: not installed

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` with the current time; numeric fields also go to TensorBoard
        as ``<type>/<field>`` at the record's ``global_step``."""
        if not self.enabled:
            return
        record = {"time": time.time(), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        writer = self._writer()
        if writer:
            step = record.get("global_step", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("time", "global_step"):
                    writer.add_scalar(f"{record.get('type', 'x')}/{key}", value, step)

    def _writer(self) -> Any:
        if self._tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))
            except Exception:  # tensorboard not installed
                self._tensorboard = False
        return self._tensorboard
