"""What a training run shows and records: a progress bar per epoch, one line per epoch,
and the metrics log (``RUN_DIR/metrics.jsonl``, mirrored to TensorBoard; see
:mod:`.metrics`).

The records, by ``type``: ``stage_start``; ``train`` every :data:`LOG_EVERY_STEPS` global
steps; ``epoch`` after every epoch (with the workers' ``consistency`` digests and the
test-split top-1 under ``validation``, the key older runs were written with); ``resume``;
``continue``; ``forecast`` (the time the rest of the run will take, see :mod:`.forecast`);
``done``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from ..storage.run_layout import RunLayout
from .epoch import EpochStats, StagePlan, StepResult
from .forecast import Forecast
from .metrics import MetricsLog
from .schedule import Position

__all__ = ["LOG_EVERY_STEPS", "EpochProgress", "Reporter", "format_epoch_line"]

LOG_EVERY_STEPS = 20  # a "train" record every this many global steps


def format_epoch_line(stage: str, record: dict[str, Any], test_top1: dict[str, float]) -> str:
    """The line printed after an epoch: its training figures and the test-split top-1."""
    parts = "  ".join(f"{k} {v:.1f}" for k, v in test_top1.items())
    return (
        f"[{stage}] epoch {record['epoch']}: train loss {record['train_loss']:.3f}, "
        f"{record['images_per_s']:.0f} img/s ({100 * record['data_wait_fraction']:.0f} % "
        f"waiting for data) | test top-1: {parts}"
    )


class Reporter:
    """Shows progress (``progress``) and writes the metrics log (``enabled``: on the
    process that owns the run directory) of one run."""

    def __init__(self, layout: RunLayout, *, enabled: bool = True, progress: bool = True) -> None:
        self.metrics = MetricsLog(layout.root, enabled=enabled)
        self.progress = progress

    def log(self, record: dict[str, Any]) -> None:
        self.metrics.write(record)

    def stage_start(self, stage: str, pos: Position, plan: StagePlan) -> None:
        self.log(
            {
                "type": "stage_start",
                **pos.record(stage),
                "total_steps": plan.total_steps,
                "lr": plan.peak_lr,
            }
        )

    def resumed(self, checkpoint: Path, pos: Position) -> None:
        self.log({"type": "resume", "checkpoint": str(checkpoint), **pos.as_dict()})
        if self.progress:
            tqdm.write(f"resumed from {checkpoint} ({pos.as_dict()})")

    def continued(self, supernet: Path, after_stage: str | None) -> None:
        self.log({"type": "continue", "from": str(supernet), "after_stage": after_stage})

    @contextmanager
    def epoch(self, stage: str, pos: Position, plan: StagePlan) -> Iterator[EpochProgress]:
        """The progress bar of the epoch at ``pos``, open while the block runs."""
        bar = tqdm(
            total=plan.epoch_length(pos),
            disable=not self.progress,
            dynamic_ncols=True,
            desc=f"{stage} epoch {pos.epoch + 1}/{plan.num_epochs}",
        )
        try:
            yield EpochProgress(self, bar, stage)
        finally:
            bar.close()

    def epoch_end(
        self,
        stage: str,
        stats: EpochStats,
        consistency: dict[str, Any],
        test_top1: dict[str, float],
    ) -> None:
        """The ``epoch`` record (at the position where the epoch ended) and line."""
        assert stats.end is not None, "the epoch has not ended"
        record = {
            "type": "epoch",
            **stats.end.record(stage),
            "train_loss": stats.train_loss,
            "train_top1": stats.train_top1,
            "images_per_s": stats.images_per_s,
            "data_wait_fraction": stats.data_wait_fraction,
        }
        self.log({**record, "consistency": consistency, "validation": test_top1})
        if self.progress:
            tqdm.write(format_epoch_line(stage, record, test_top1))

    def forecast(self, forecast: Forecast) -> None:
        """The forecast of the rest of the run: a ``forecast`` record and a line."""
        self.log(forecast.record())
        self.note(forecast.line())

    def note(self, text: str) -> None:
        """A line for the user (kept clear of the progress bars)."""
        if self.progress:
            tqdm.write(text)

    def done(self, results: dict[str, Any]) -> None:
        self.log({"type": "done", **results})

    def close(self) -> None:
        """Flush and close the TensorBoard files (a later record opens new ones)."""
        self.metrics.close()


@dataclass
class EpochProgress:
    """One epoch's progress bar; :meth:`step` is the epoch's per-step callback."""

    reporter: Reporter
    bar: Any  # tqdm
    stage: str

    def step(self, pos: Position, step: StepResult, stats: EpochStats) -> None:
        """Advance the bar; every :data:`LOG_EVERY_STEPS` global steps, a ``train`` record."""
        self.bar.update(1)
        self.bar.set_postfix(
            loss=f"{step.loss:.3f}",
            acc=f"{stats.train_top1:.1f}",
            res=step.resolution,
            lr=f"{step.lr:.4f}",
            img_s=f"{stats.images_per_s:.0f}",
            data=f"{stats.data_wait_percent:.0f}%",
        )
        if pos.global_step % LOG_EVERY_STEPS == 0:
            self.reporter.log(
                {
                    "type": "train",
                    **pos.record(self.stage),
                    "loss": step.loss,
                    "lr": step.lr,
                    "resolution": step.resolution,
                    "images_per_s": stats.images_per_s,
                    "data_wait_fraction": stats.data_wait_fraction,
                }
            )
