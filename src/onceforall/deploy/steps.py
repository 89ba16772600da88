"""The steps after training, one function each, shared by ``ofa run`` and the single
commands (``ofa acc-dataset``, ``train-predictor``, ``latency-table``, ``search``,
``specialize``, ``export``), so that no step is written twice.

Each step takes what it works on explicitly (the run's :class:`RunLayout`, its config,
the supernet, ...), writes its file where the layout says unless told otherwise, and
returns a typed result. Printing is left to the callers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..compat.latency_tables import open_latency_table
from ..compat.predictors import open_predictor
from ..errors import RunDirectoryError
from ..evaluation import SubnetEvaluator
from ..latency.base import LatencyModel
from ..latency.table import LatencyTable
from ..models import Supernet
from ..predictors import (
    AccuracyPredictor,
    PredictorReport,
    accuracy_dataset_for_run,
    fit_accuracy_predictor,
)
from ..predictors.base import ArchPredictor
from ..search import evolutionary_search, random_search
from ..storage.atomic import write_text_atomic
from ..storage.run_layout import RunLayout
from ..training import TrainConfig
from .export import ExportResult, export_subnet
from .specialize import Specialized, parse_target, search_costs, search_space, specialize

__all__ = [
    "AccuracyDataset",
    "LatencyTableResult",
    "PredictorResult",
    "SearchResult",
    "SpecializeResult",
    "accuracy_dataset_step",
    "export_step",
    "latency_table_step",
    "load_predictor_and_table",
    "memory_format",
    "predictor_step",
    "search_step",
    "specialize_step",
    "targets_need_latency",
    "test_evaluator",
]


# ------------------------------------------------------------------ shared helpers
def memory_format(config: TrainConfig) -> torch.memory_format:
    """The memory format the run trains and measures in."""
    return torch.channels_last if config.channels_last else torch.contiguous_format


def test_evaluator(config: TrainConfig, data: str | os.PathLike) -> SubnetEvaluator:
    """Measures sub-networks of a run on its test split, BN-recalibrated on its held-out
    training images (the same splits the run trained with)."""
    splits = config.open_splits(data)
    return SubnetEvaluator(
        splits.holdout,
        splits.test,
        calibration_images=config.bn_recal_images,
        num_workers=config.num_workers,
        seed=config.seed,
        memory_format=memory_format(config),
    )


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
) -> tuple[ArchPredictor, LatencyModel | None]:
    """The run's accuracy predictor and, when there is one, its latency table (default
    paths: the layout's). Either may be ours or the authors' files as they ship them (a
    predictor ``.pth``, a folder of lookup-table YAML files), recognised by content and
    checked against ``supernet``. A table that was asked for by path or that
    ``need_table`` requires and is missing is an error naming the command that builds it."""
    predictor = open_predictor(predictor_path or layout.accuracy_predictor, supernet)
    path = Path(table_path or layout.latency_table)
    table = None
    if path.exists():
        table = open_latency_table(path, supernet)
    elif need_table or table_path:
        raise RunDirectoryError(f"no latency table at {path}; build one: ofa latency-table")
    return predictor, table


# ------------------------------------------------------------------ the steps
@dataclass
class AccuracyDataset:
    """The accuracy dataset file and its rows."""

    path: Path
    rows: list[dict[str, Any]]


def accuracy_dataset_step(
    layout: RunLayout,
    data: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    num_archs: int = 1000,
    calibration_images: int | None = None,
    eval_images: int | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> AccuracyDataset:
    """Build (or resume, row by row) the accuracy dataset of the run (default file: the
    layout's); see :func:`onceforall.predictors.accuracy_dataset_for_run`."""
    path, rows = accuracy_dataset_for_run(
        layout.root,
        data,
        out=out,
        num_archs=num_archs,
        calibration_images=calibration_images,
        eval_images=eval_images,
        seed=seed,
        device=device,
        progress=progress,
    )
    return AccuracyDataset(path, rows)


@dataclass
class PredictorResult:
    """The accuracy predictor, where it is, and its fit report (None when reused)."""

    predictor: AccuracyPredictor
    path: Path
    report: PredictorReport | None


def predictor_step(
    layout: RunLayout,
    space: Any,
    rows: Sequence[dict[str, Any]],
    *,
    out: str | os.PathLike | None = None,
    reuse: bool = False,
    val_fraction: float = 0.2,
    epochs: int = 300,
    seed: int = 0,
) -> PredictorResult:
    """Fit the accuracy predictor on the dataset ``rows`` and save it (default file: the
    layout's); with ``reuse``, a predictor already saved there is loaded instead."""
    path = Path(out or layout.accuracy_predictor)
    if reuse and path.is_file():
        return PredictorResult(AccuracyPredictor.load(path, space=space), path, None)
    predictor, report = fit_accuracy_predictor(
        space,
        [r["arch"] for r in rows],
        [r["accuracy"] for r in rows],
        val_fraction=val_fraction,
        epochs=epochs,
        seed=seed,
    )
    return PredictorResult(predictor, predictor.save(path), report)


@dataclass
class LatencyTableResult:
    """The latency table, where it is, and whether an existing file was reused as is."""

    table: LatencyTable
    path: Path
    reused: bool


def latency_table_step(
    supernet: Supernet,
    out: str | os.PathLike,
    *,
    reuse: bool = False,
    extend: bool = False,
    backend: str = "torch",
    threads: int | None = None,
    batch_size: int = 1,
    resolutions: Sequence[int] | None = None,
    repeats: int = 30,
    progress: bool = True,
) -> LatencyTableResult:
    """Time ``supernet``'s blocks on this device and save the table to ``out``. With
    ``reuse`` a table already at ``out`` is loaded as it is; with ``extend`` only what it
    lacks is timed."""
    path = Path(out)
    if reuse and path.is_file():
        return LatencyTableResult(LatencyTable.load(path, supernet), path, True)
    existing = LatencyTable.load(path, supernet) if extend and path.is_file() else None
    table = LatencyTable.build(
        supernet,
        backend=backend,
        threads=threads,
        batch_size=batch_size,
        resolutions=resolutions,
        repeats=repeats,
        existing=existing,
        progress=progress,
    )
    table.save(path)
    return LatencyTableResult(table, path, False)


@dataclass
class SearchResult:
    """The best predicted sub-network for one target (not measured)."""

    target: str
    arch: Any  # the family's arch value
    predicted_accuracy: float
    costs: dict[str, float]  # macs, params and, with a table, latency_ms
    wall_time_s: float
    resolutions: tuple[int, ...] = ()  # those searched (see search_space)

    def to_dict(self) -> dict[str, Any]:
        record = {
            "target": self.target,
            "arch": self.arch.to_dict(),
            "predicted_accuracy": self.predicted_accuracy,
        }
        return record | self.costs | {"searched_resolutions": list(self.resolutions)}


def search_step(
    supernet: Supernet,
    predictor: ArchPredictor,
    targets: Sequence[str],
    *,
    latency_table: LatencyModel | None = None,
    random: bool = False,
    population: int = 100,
    generations: int = 500,
    seed: int = 0,
    out: str | os.PathLike | None = None,
) -> list[SearchResult]:
    """Search each target on the predictor alone (evolutionary, or ``random`` as a
    baseline), over the resolutions the predictor and table cover (:func:`search_space`);
    with ``out``, write the results there as JSON."""
    predictor.check_supernet(supernet)
    space = search_space(supernet, predictor, latency_table)
    costs = search_costs(supernet, latency_table, space)
    search = random_search if random else evolutionary_search
    results = []
    for target in targets:
        found = search(
            space,
            predictor,
            parse_target(target, costs),
            population=population,
            generations=generations,
            seed=seed,
        )
        values = {name: cost.of(found.arch) for name, cost in costs.items()}
        results.append(
            SearchResult(
                target, found.arch, found.accuracy, values, found.wall_time_s, space.resolutions
            )
        )
    if out is not None:
        write_text_atomic(out, json.dumps([r.to_dict() for r in results], indent=1) + "\n")
    return results


@dataclass
class SpecializeResult:
    """The sub-network chosen per target and the file they were written to."""

    chosen: list[Specialized]
    path: Path


def specialize_step(
    layout: RunLayout,
    supernet: Supernet,
    predictor: ArchPredictor,
    targets: Sequence[str],
    *,
    evaluator: SubnetEvaluator,
    latency_table: LatencyModel | None = None,
    random_baseline: int = 5,
    seed: int = 0,
    population: int = 100,
    generations: int = 500,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> SpecializeResult:
    """Search per target, measure the winners for real (see
    :func:`~onceforall.deploy.specialize.specialize`) and write them as JSON (default
    file: the layout's). ``supernet`` is put in the evaluator's memory format."""
    supernet.to(memory_format=evaluator.memory_format)
    chosen = specialize(
        supernet,
        predictor,
        targets,
        latency_table=latency_table,
        evaluator=evaluator,
        random_baseline=random_baseline,
        seed=seed,
        population=population,
        generations=generations,
        progress=progress,
    )
    path = write_text_atomic(
        out or layout.specialized, json.dumps([c.to_dict() for c in chosen], indent=1) + "\n"
    )
    return SpecializeResult(chosen, path)


def export_step(
    supernet: Supernet,
    arch: Any,
    out: str | os.PathLike,
    *,
    evaluator: SubnetEvaluator,
    onnx: bool = True,
    threads: int | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> ExportResult:
    """Export ``arch`` to the folder ``out``, BN-recalibrated and measured on the same
    images as specialisation (so the export's top-1 is the one ``specialize`` measured)."""
    return export_subnet(
        supernet,
        arch,
        out,
        calibration_loader=evaluator.batches("calibration", arch.r),
        test_loader=evaluator.batches("test", arch.r),
        n_calibration=evaluator.calibration_images,
        onnx=onnx,
        threads=threads,
        extra_metadata=extra_metadata,
    )
