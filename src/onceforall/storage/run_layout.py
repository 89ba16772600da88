"""Where everything of a run lives: one object names every path of a run directory.

::

    RUN/.onceforall-run           marks the folder as a run directory (storage.run_guard)
    RUN/.lock                     held by the one command writing into the run
    RUN/config.yaml               the config the run was started with
    RUN/checkpoints/              the last complete training checkpoints (atomic, verified)
    RUN/teacher/                  the full network after the first stage (frozen teacher)
    RUN/supernet/                 the supernet after the last finished stage
    RUN/metrics.jsonl             one JSON record per log interval and per validation
    RUN/tensorboard/              the same scalars as TensorBoard event files
    RUN/training_done.json        the final validation, once every stage has finished
    RUN/accuracy_dataset.jsonl    measured accuracy of sampled sub-networks (resumable)
    RUN/accuracy_predictor.pt     the MLP accuracy predictor
    RUN/latency_table.json        per-block latencies measured on this device (or another,
                                  from a latency bundle's results)
    RUN/latency_tables/B.json     the tables of other backends B (ofa latency-table --backend)
    RUN/latency_bundles/          the manifest of every latency bundle made for the run
    RUN/specialized.json          chosen sub-network per target, predicted and measured
    RUN/pareto.png                sampled archs, predicted front, chosen sub-networks
    RUN/exports/<target>/         model.safetensors, model.onnx, arch.json, metadata.json

Code that reads or writes a run asks a :class:`RunLayout` for the path; no file name of
a run is written anywhere else.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

__all__ = ["RunLayout"]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class RunLayout:
    """The paths of the run directory ``root``."""

    root: Path

    def __init__(self, root: PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    # the directory itself (see onceforall.storage.run_guard)
    @property
    def marker(self) -> Path:
        return self.root / ".onceforall-run"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    # training
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def supernet(self) -> Path:
        return self.root / "supernet"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def training_done(self) -> Path:
        return self.root / "training_done.json"

    def weights(self, which: str) -> Path:
        """The folder of ``which`` weights: ``supernet``, ``teacher`` or ``checkpoints``."""
        folders = {"supernet": self.supernet, "teacher": self.teacher}
        folders["checkpoints"] = self.checkpoints
        if which not in folders:
            raise ValueError(f"weights are 'supernet', 'teacher' or 'checkpoints', not {which!r}")
        return folders[which]

    # the steps after training
    @property
    def accuracy_dataset(self) -> Path:
        return self.root / "accuracy_dataset.jsonl"

    @property
    def accuracy_predictor(self) -> Path:
        return self.root / "accuracy_predictor.pt"

    @property
    def latency_table(self) -> Path:
        return self.root / "latency_table.json"

    def latency_table_of(self, backend: str) -> Path:
        """Where a table of ``backend`` is kept beside the run's own (``latency_table``,
        timed on the backend its config names)."""
        return self.root / "latency_tables" / f"{backend}.json"

    @property
    def latency_bundles(self) -> Path:
        return self.root / "latency_bundles"

    @property
    def specialized(self) -> Path:
        return self.root / "specialized.json"

    @property
    def pareto_plot(self) -> Path:
        return self.root / "pareto.png"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    def export(self, target: str) -> Path:
        """The export folder of the sub-network chosen for ``target`` (``latency_ms<=5``
        becomes ``exports/latency_ms_5``)."""
        return self.exports / re.sub(r"[^A-Za-z0-9.]+", "_", target).strip("_")
