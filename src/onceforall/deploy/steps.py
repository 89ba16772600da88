"""The steps after training, one function each, shared by ``ofa run`` and the single
commands (``ofa acc-dataset``, ``train-predictor``, ``search``, ``specialize``,
``export``; the latency steps are in :mod:`.latency_steps`), so that no step is written
twice.

Each step takes what it works on explicitly (the run's :class:`RunLayout`, its config,
the supernet, ...), writes its file where the layout says unless told otherwise, and
returns a typed result. Printing is left to the callers.

A step that writes into a run holds the run's lock
(:func:`~onceforall.storage.run_guard.run_lock`; ``ofa run`` already holds it, and the
lock is re-entrant); one that writes elsewhere locks what it writes
(:func:`~onceforall.storage.run_guard.lock_beside`). What a step makes from the supernet
records its digest (:func:`~onceforall.training.run_dir.supernet_digest`), and the run's
own predictor is refused once the supernet changed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..evaluation import SubnetEvaluator
from ..latency.base import LatencyModel
from ..models import Supernet
from ..predictors import (
    PREDICTOR_KINDS,
    AccuracyPredictor,
    PredictorReport,
    accuracy_dataset_for_run,
    fit_accuracy_predictor,
    label_sampling_sd,
)
from ..predictors.base import ArchPredictor
from ..search import evolutionary_search, random_search
from ..storage.atomic import check_file_target, write_text_atomic
from ..storage.run_guard import run_lock
from ..storage.run_layout import RunLayout
from ..training.run_dir import supernet_digest
from .export import ExportResult, export_subnet
from .latency_steps import LatencyTableResult, latency_table_step
from .quantized import MIN_AGREEMENT
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
    "predictor_step",
    "search_step",
    "specialize_step",
]


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
    start_over: bool = False,
    runtime: str = "torch",
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
        start_over=start_over,
        runtime=runtime,
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
    members: int = 1,
    kind: str = "linear",
    seed: int = 0,
) -> PredictorResult:
    """Fit the accuracy predictor on the dataset ``rows`` and save it (default file: the
    layout's), recording the supernet the rows were measured on; with ``reuse``, a
    predictor already saved there is loaded instead, unless it was fitted on another
    supernet's rows."""
    path = check_file_target(out or layout.accuracy_predictor)
    measured_on = {(r.get("measured_with") or {}).get("supernet_sha256") for r in rows}
    digest = next(iter(measured_on)) if len(measured_on) == 1 else None
    with run_lock(layout.root):
        if reuse and path.is_file():
            saved = AccuracyPredictor.load(path, space=space)
            if saved.supernet_sha256 == digest or digest is None:
                return PredictorResult(saved, path, None)
        predictor, report = fit_accuracy_predictor(
            space,
            [r["arch"] for r in rows],
            [r["accuracy"] for r in rows],
            val_fraction=val_fraction,
            epochs=epochs,
            members=members,
            layers=PREDICTOR_KINDS[kind],
            seed=seed,
        )
        predictor.supernet_sha256 = digest
        images = {r.get("images", (r.get("measured_with") or {}).get("eval_images")) for r in rows}
        if len(images) == 1 and isinstance(n := next(iter(images)), int) and n > 0:
            sd = label_sampling_sd([r["accuracy"] for r in rows], n)
            report = dataclasses.replace(report, label_images=n, label_sd=sd)
        return PredictorResult(predictor, predictor.save(path), report)


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
    if out is not None:
        check_file_target(out)  # now, not after the search
    predictor.check_supernet(supernet)
    space = search_space(supernet, predictor, latency_table)
    costs = search_costs(supernet, latency_table, space)
    search = random_search if random else evolutionary_search
    parsed = [parse_target(target, costs) for target in targets]  # all before any search
    results = []
    for target, constraints in zip(targets, parsed):
        found = search(
            space,
            predictor,
            constraints,
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
    file: the layout's), each with the supernet's digest. ``supernet`` is put in the
    evaluator's memory format."""
    check_file_target(out or layout.specialized)  # now, not after the measuring
    with run_lock(layout.root):
        return _specialize(
            layout,
            supernet,
            predictor,
            targets,
            evaluator,
            latency_table,
            random_baseline,
            seed,
            population,
            generations,
            out,
            progress,
        )


def _specialize(
    layout: RunLayout,
    supernet: Supernet,
    predictor: ArchPredictor,
    targets: Sequence[str],
    evaluator: SubnetEvaluator,
    latency_table: LatencyModel | None,
    random_baseline: int,
    seed: int,
    population: int,
    generations: int,
    out: str | os.PathLike | None,
    progress: bool,
) -> SpecializeResult:
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
    digest = {"supernet_sha256": supernet_digest(layout.root)}
    records = [c.to_dict() | digest for c in chosen]
    path = write_text_atomic(out or layout.specialized, json.dumps(records, indent=1) + "\n")
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
    run: RunLayout | None = None,
    runtimes: Sequence[str] = (),
    int8_min_agreement: float = MIN_AGREEMENT,
) -> ExportResult:
    """Export ``arch`` to the folder ``out``, BN-recalibrated and measured on the same
    images as specialisation (so the export's top-1 is the one ``specialize`` measured).
    With the ``run`` the supernet comes from, its metadata names the run and the
    supernet's digest. ``runtimes``: the backends whose model files are written besides
    ``model.onnx`` (:func:`~onceforall.deploy.export.write_export`); INT8 ones are
    calibrated on the run's held-out images."""
    if run is not None:
        source = {"source_run": str(run.root), "supernet_sha256": supernet_digest(run.root)}
        extra_metadata = source | dict(extra_metadata or {})
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
        runtimes=runtimes,
        int8_min_agreement=int8_min_agreement,
    )
