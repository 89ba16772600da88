"""What the steps after training read from a run: its predictor and latency table
(ours or the authors' files, checked against the supernet; the run's own predictor
refused once the supernet changed) and the evaluator that measures its sub-networks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from ..compat.latency_tables import open_latency_table
from ..compat.predictors import open_predictor
from ..errors import ConfigError, RunDirectoryError, StaleResultError
from ..evaluation import SubnetEvaluator
from ..latency.backends import get_backend
from ..latency.base import LatencyModel
from ..models import Supernet
from ..predictors.base import ArchPredictor
from ..storage.run_layout import RunLayout
from ..training import TrainConfig
from ..training.run_dir import supernet_digest

__all__ = [
    "evaluator_for_run",
    "load_predictor_and_table",
    "memory_format",
    "run_table_path",
    "targets_need_latency",
]


def memory_format(config: TrainConfig) -> torch.memory_format:
    """The memory format the run trains and measures in."""
    return torch.channels_last if config.channels_last else torch.contiguous_format


def evaluator_for_run(config: TrainConfig, data: str | os.PathLike) -> SubnetEvaluator:
    """What measures sub-networks of a run for specialisation and export: its test
    split, each sub-network BN-recalibrated on its held-out training images (the same
    splits the run trained with), run by the runtime its accuracy dataset is measured
    with (``specialize.acc_eval_runtime``)."""
    splits = config.open_splits(data)
    return SubnetEvaluator(
        splits.holdout,
        splits.test,
        calibration_images=config.bn_recal_images,
        num_workers=config.num_workers,
        seed=config.seed,
        memory_format=memory_format(config),
        runtime=config.specialize.acc_eval_runtime,
    )


def run_table_path(layout: RunLayout, config: TrainConfig, backend: str | None = None) -> Path:
    """Where the run keeps its latency table of ``backend``: its own table
    (``latency_table.json``) when ``backend`` is None or the one its config names
    (``specialize.latency_backend``, what ``ofa run`` times), else the one beside it."""
    if backend is None or backend == config.specialize.latency_backend:
        return layout.latency_table
    return layout.latency_table_of(get_backend(backend).name)


def targets_need_latency(targets: Sequence[str]) -> bool:
    """Whether any target constrains latency (and so needs a latency table)."""
    return any("latency" in t for t in targets)


def load_predictor_and_table(
    layout: RunLayout,
    supernet: Supernet,
    *,
    predictor_path: str | os.PathLike | None = None,
    table_path: str | os.PathLike | None = None,
    need_table: bool = False,
    backend: str | None = None,
    config: TrainConfig | None = None,
) -> tuple[ArchPredictor, LatencyModel | None]:
    """The run's accuracy predictor and, when there is one, its latency table (default
    paths: the layout's). Either may be ours or the authors' files as they ship them (a
    predictor ``.pth``, a folder of lookup-table YAML files), recognised by content and
    checked against ``supernet``. A table that was asked for by path or that
    ``need_table`` requires and is missing is an error naming the command that builds it.
    With ``backend`` (and the run's ``config``) the table is the run's table of that
    backend (:func:`run_table_path`).
    The run's own predictor is refused when it was fitted on another supernet than the
    run's (training went on, or the weights were replaced, since)."""
    path = Path(predictor_path or layout.accuracy_predictor)
    predictor = open_predictor(path, supernet)
    own = path.resolve() == layout.accuracy_predictor.resolve()
    fitted_on = getattr(predictor, "supernet_sha256", None)
    current = supernet_digest(layout.root)
    if own and fitted_on is not None and fitted_on != current:
        raise StaleResultError(
            f"{path} was fitted on sub-networks of another supernet (sha256 "
            f"{fitted_on[:12]}...) than the run's (sha256 {str(current)[:12]}...): the "
            "supernet changed since; measure and fit again: ofa acc-dataset --run "
            f"{layout.root} && ofa train-predictor --run {layout.root} (or ofa run)"
        )
    if backend is not None:
        if table_path is not None:
            raise ConfigError(
                "--backend picks one of the run's own latency tables; --latency-table "
                "names a table itself: give one of them"
            )
        if config is None:
            raise ValueError("a backend's table is found through the run's config")
        get_backend(backend)  # a known one, or the error that lists them
    if table_path is not None:
        path = Path(table_path)
    elif config is not None:
        path = run_table_path(layout, config, backend)
    else:
        path = layout.latency_table
    table = None
    if path.exists():
        table = open_latency_table(path, supernet)
    elif backend is not None:
        raise RunDirectoryError(
            f"the run has no {backend} latency table (looked for {path}); time one: "
            f"ofa latency-table --run {layout.root} --backend {backend}"
        )
    elif need_table or table_path:
        raise RunDirectoryError(f"no latency table at {path}; build one: ofa latency-table")
    if backend is not None and getattr(table, "backend", backend) != backend:
        raise RunDirectoryError(
            f"{path} was timed on {table.backend}, not {backend}: time it again with "
            f"ofa latency-table --run {layout.root} --backend {backend}"
        )
    return predictor, table
