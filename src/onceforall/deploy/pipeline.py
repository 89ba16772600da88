"""The whole job in one call: train, measure, predict, specialise, export (``ofa run``).

Every step writes its result into the run directory (the supernet, the accuracy dataset,
predictor and latency table, the chosen sub-networks, the Pareto plot and the exports; see
:mod:`onceforall.storage.run_layout`) and is skipped when that result is already there,
so running again resumes an interrupted job or only redoes what was deleted.
Specialisation, the plot and the exports are redone on every run.

The settings of the steps after training live under ``specialize:`` in the run's YAML
config (:class:`~onceforall.training.config.SpecializeConfig`, parsed with the config).
Each step is a function of :mod:`.steps`, the same the single ``ofa`` commands call;
every path comes from the run's :class:`~onceforall.storage.run_layout.RunLayout`.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..compat.latency_tables import check_latency_table, open_latency_table
from ..compat.predictors import open_predictor
from ..evaluation import SubnetEvaluator
from ..latency.base import LatencyModel
from ..models import Supernet
from ..predictors.base import ArchPredictor
from ..predictors.dataset import (
    measurement_settings,
    read_accuracy_dataset,
    settings_differences,
)
from ..storage.checkpoint import list_checkpoints
from ..storage.onnx_export import ExportError
from ..storage.reading import read_weights_only
from ..storage.run_guard import claim_run_directory, run_lock
from ..storage.run_layout import RunLayout
from ..training import TrainConfig, load_run, train
from ..training.config import SpecializeConfig
from ..training.distributed import parse_device
from ..training.forecast import Forecast
from ..training.run_dir import start_over
from . import forecast as later
from .export import ExportResult
from .finetune_step import finetune_winners
from .plot import plot_run
from .quantized import INT8_BACKEND
from .run_inputs import evaluator_for_run
from .specialize import Specialized, search_costs, search_space, spread_latency_targets
from .steps import (
    accuracy_dataset_step,
    export_step,
    latency_table_step,
    predictor_step,
    specialize_step,
)

__all__ = ["SpecializeConfig", "RunSummary", "run_pipeline"]


@dataclass
class RunSummary:
    run_dir: Path
    space: Any
    chosen: list[Specialized]
    exports: list[Path]
    plot: Path | None
    predictor_report: str | None
    latency_table: Path | None
    took: dict[str, float] = field(default_factory=dict)  # seconds per step run this time
    took_line: str = ""  # the same, as one line


@contextmanager
def _timed(forecast: Forecast, name: str):
    """Record how long the block took as step ``name`` of the forecast."""
    start = time.perf_counter()
    yield
    forecast.finish(name, time.perf_counter() - start)


def _say(progress: bool) -> Callable[[str], None]:
    return (lambda text: print(text, flush=True)) if progress else (lambda text: None)


def run_pipeline(
    config: TrainConfig,
    data: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    fresh: bool = False,
    device: str | None = None,
    progress: bool = True,
    predictor: str | os.PathLike | None = None,
    latency_table: str | os.PathLike | None = None,
    check_data: bool = False,
) -> RunSummary:
    """Run (or continue) every step for ``config`` on ``data`` in ``run_dir``. A given
    ``predictor`` file replaces the accuracy dataset and the fitted predictor, a given
    ``latency_table`` (file or folder) the table timed here; either may be ours or the
    authors' files as they ship them. ``check_data`` first decodes every image the run
    reads (:meth:`TrainConfig.check_images`), before anything is deleted or trained."""
    started = time.perf_counter()
    layout = RunLayout(run_dir)
    say = _say(progress)
    parse_device(device)  # before --fresh deletes anything
    # The files given are read now (and checked against the supernet once it is trained):
    # one missing or damaged fails before training, not after it.
    if predictor is not None:
        read_weights_only(predictor, "accuracy predictor")
    if latency_table is not None:
        check_latency_table(latency_table)
    if check_data:
        say(config.check_images(data, progress=progress))
    if fresh:
        start_over(config, data, layout.root)
    given = (predictor, latency_table)
    with run_lock(claim_run_directory(layout.root).root):
        return _run_steps(config, data, layout, say, started, device, progress, given)


def _run_steps(
    config: TrainConfig,
    data: str | os.PathLike,
    layout: RunLayout,
    say: Callable[[str], None],
    started: float,
    device: str | None,
    progress: bool,
    given: tuple[str | os.PathLike | None, str | os.PathLike | None],
) -> RunSummary:
    """The steps of :func:`run_pipeline`, under the run directory's lock."""
    settings = config.specialize
    given_predictor, given_table = given

    # 1. Train (resumes from the last complete checkpoint when there is one). The
    # trainer forecasts the whole job: its stages and the steps below.
    forecast = Forecast()
    imported = list_checkpoints(layout.supernet) and not list_checkpoints(layout.checkpoints)
    if layout.training_done.is_file() or imported:
        say(f"[1/6] supernet: reusing {layout.supernet}{' (imported)' if imported else ''}")
    else:
        say("[1/6] training the supernet (progressive shrinking)")
        train(
            config,
            data,
            layout.root,
            resume=bool(list_checkpoints(layout.checkpoints)),
            device=device,
            progress=progress,
            forecast=forecast,
            forecast_later=lambda net, test_images: later.later_steps(
                config,
                net,
                layout,
                test_images,
                accuracy_dataset=given_predictor is None,
                latency_table=given_table is None,
            ),
        )
        if forecast.measured and forecast.later:
            say(forecast.line())
    _, supernet = load_run(layout.root)

    if given_predictor is not None:  # 2-3. the predictor given replaces them
        accuracy, report, rows = open_predictor(given_predictor, supernet), None, []
        say("[2/6] accuracy dataset: not needed, the predictor is given")
        say(f"[3/6] accuracy predictor: {accuracy.describe()}")
    else:
        accuracy, report, rows = _measure_accuracy(
            config, data, layout, supernet, forecast, say, device, progress
        )
    if given_table is not None:  # 4. the table given replaces the one timed here
        table, table_path = open_latency_table(given_table, supernet), Path(given_table)
        say(f"[4/6] latency table: {table.describe()}")
    else:
        table, table_path = _time_latency_table(config, layout, supernet, forecast, say, progress)

    # 5. Specialise and measure (the search runs on the resolutions the predictor and
    # the table both cover).
    space = search_space(supernet, accuracy, table)
    costs = search_costs(supernet, table, space)
    metric = "macs" if table is None else "latency_ms"
    targets = settings.targets or spread_latency_targets(costs[metric], settings.num_targets)
    say(f"[5/6] specialising for {', '.join(targets)}")
    evaluator = evaluator_for_run(config, data)
    with _timed(forecast, later.SPECIALISE):
        chosen = specialize_step(
            layout,
            supernet,
            accuracy,
            targets,
            evaluator=evaluator,
            latency_table=table,
            random_baseline=settings.random_baseline,
            seed=config.seed,
            generations=settings.generations,
            progress=progress,
        ).chosen
    plot = plot_run(layout.pareto_plot, space, accuracy, costs, table, rows, chosen)
    # Exports are timed with the table's threads (the authors' tables have none).
    threads = getattr(table, "threads", None) or settings.latency_threads or None

    # 6. Export.
    exports: list[Path] = []
    if settings.export:
        int8 = " and INT8" if settings.export_int8 else ""
        say(f"[6/6] exporting the chosen sub-networks (safetensors + ONNX{int8}, checked)")
        with _timed(forecast, later.EXPORT):
            for row in chosen:
                result = _export(supernet, row, layout, evaluator, threads, settings, say)
                exports.append(result.out_dir)
    if settings.finetune_epochs > 0:
        exports += finetune_winners(config, data, layout, supernet, chosen, say, device, progress)
    return RunSummary(
        layout.root,
        supernet.space,
        chosen,
        exports,
        plot,
        report,
        table_path,
        took=dict(forecast.done),
        took_line=forecast.summary(total_s=time.perf_counter() - started),
    )


def _export(
    supernet: Supernet,
    row: Specialized,
    layout: RunLayout,
    evaluator: SubnetEvaluator,
    threads: int | None,
    settings: SpecializeConfig,
    say: Callable[[str], None],
) -> ExportResult:
    """Export one winner; an INT8 model that fails its check is left out (said in one
    line), not the export: the run's FP32 results stand."""

    def export(int8: bool) -> ExportResult:
        return export_step(
            supernet,
            row.arch,
            layout.export(row.target),
            evaluator=evaluator,
            threads=threads,
            extra_metadata={"target": row.target},
            run=layout,
            runtimes=[INT8_BACKEND] if int8 else [],
        )

    if not settings.export_int8:
        return export(False)
    try:
        return export(True)
    except ExportError as exc:
        if "INT8" not in str(exc):
            raise
        say(f"  {row.target}: no INT8 model ({exc})")
        return export(False)


def _measure_accuracy(
    config: TrainConfig,
    data: str | os.PathLike,
    layout: RunLayout,
    supernet: Supernet,
    forecast: Forecast,
    say: Callable[[str], None],
    device: str | None,
    progress: bool,
) -> tuple[ArchPredictor, str | None, list[dict[str, Any]]]:
    """Steps 2 and 3: the accuracy dataset (resumable row by row) and the predictor fitted
    on it (a saved one is reused); returns the predictor, its report and the rows."""
    settings = config.specialize
    say(f"[2/6] accuracy dataset: {settings.acc_dataset_archs} sub-networks")
    stale = _stale_rows(layout, config)
    if stale:
        say(f"[2/6] {layout.accuracy_dataset} was measured otherwise ({stale}): measuring again")
    runtime = settings.acc_eval_runtime
    where = parse_device(device)
    if runtime == "onnxruntime" and where.type != "cpu":
        # ONNX Runtime is the faster way on a CPU; on a GPU, PyTorch there is faster
        # still, and the labels are the same to float rounding.
        say(f"[2/6] measuring with PyTorch on {where} (acc_eval_runtime onnxruntime is CPU-only)")
        runtime = "torch"
    planned = {w.name: w for w in forecast.later}
    start = time.perf_counter()
    dataset = accuracy_dataset_step(
        layout,
        data,
        num_archs=settings.acc_dataset_archs,
        eval_images=settings.acc_eval_images,
        seed=config.seed,
        device=device,
        progress=progress,
        start_over=True,  # rows measured otherwise (said above) are measured again
        runtime=runtime,
    )
    if later.ACCURACY_DATASET in planned:  # its speed sharpens the forecast of the rest
        seconds = time.perf_counter() - start
        forecast.observe_forward(
            later.ACCURACY_DATASET, seconds, planned[later.ACCURACY_DATASET].forward_units
        )
        forecast.finish(later.ACCURACY_DATASET, seconds)
        if forecast.later:
            say(forecast.line())

    # 3. Accuracy predictor (a saved one is reused unless fitted on another supernet).
    if layout.accuracy_predictor.is_file() and not stale:
        say(f"[3/6] accuracy predictor: reusing {layout.accuracy_predictor}")
    with _timed(forecast, "predictor"):
        fitted = predictor_step(
            layout,
            supernet.space,
            dataset.rows,
            reuse=True,
            epochs=settings.predictor_epochs,
            members=settings.predictor_members,
            kind=settings.predictor,
            seed=config.seed,
        )
    report = None if fitted.report is None else str(fitted.report)
    if report is not None:
        say(f"[3/6] accuracy predictor: {report}")
    return fitted.predictor, report, dataset.rows


def _stale_rows(layout: RunLayout, config: TrainConfig) -> str:
    """How the run's accuracy dataset, if any, was measured otherwise than now (another
    supernet, other numbers of images); empty when it was not."""
    if not layout.accuracy_dataset.is_file():
        return ""
    now = measurement_settings(
        layout.root, config.bn_recal_images, config.specialize.acc_eval_images
    )
    return "; ".join(settings_differences(read_accuracy_dataset(layout.accuracy_dataset), now))


def _time_latency_table(
    config: TrainConfig,
    layout: RunLayout,
    supernet: Supernet,
    forecast: Forecast,
    say: Callable[[str], None],
    progress: bool,
) -> tuple[LatencyModel | None, Path | None]:
    """Step 4: the latency table timed on this device (a saved one is reused), for
    families whose costs are additive per block choice; the others are specialised for
    MACs targets (None). Returns the table and its path."""
    settings = config.specialize
    if not supernet.family.additive_costs:
        say("[4/6] latency table: not available for this family; targets are on MACs")
        return None, None
    if layout.latency_table.is_file():
        say(f"[4/6] latency table: reusing {layout.latency_table}")
    else:
        say(f"[4/6] latency table ({settings.latency_backend}, this device)")
    with _timed(forecast, later.LATENCY_TABLE):
        table = latency_table_step(
            supernet,
            layout.latency_table,
            reuse=True,
            backend=settings.latency_backend,
            threads=settings.latency_threads,
            repeats=settings.latency_repeats,
            progress=progress,
            run=layout,
        ).table
    return table, layout.latency_table
