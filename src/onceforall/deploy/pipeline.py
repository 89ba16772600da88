"""The whole job in one call: train, measure, predict, specialise, export (``ofa run``).

Every step writes its result into the run directory and is skipped when that result is
already there, so running again resumes an interrupted job or only redoes what was
deleted::

    RUN/supernet/                 trained supernet (training resumes from checkpoints/)
    RUN/accuracy_dataset.jsonl    measured accuracy of sampled sub-networks (resumable)
    RUN/accuracy_predictor.pt     the MLP accuracy predictor
    RUN/latency_table.json        per-block latencies measured on this device
    RUN/specialized.json          chosen sub-network per target, predicted and measured
    RUN/pareto.png                sampled archs, predicted front, chosen sub-networks
    RUN/exports/<target>/         model.safetensors, model.onnx, arch.json, metadata.json

The settings of the steps after training live under ``specialize:`` in the run's YAML
config (:class:`~onceforall.training.config.SpecializeConfig`, parsed with the config).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..arch import MBConvSpace
from ..evaluation import SubnetEvaluator
from ..latency.table import LatencyTable
from ..predictors import (
    AccuracyPredictor,
    accuracy_dataset_for_run,
    fit_accuracy_predictor,
)
from ..search import pareto_search
from ..training import TrainConfig, load_run, train
from ..training.config import SpecializeConfig
from ..training.run_dir import DONE_FILE
from .specialize import Specialized, search_costs, specialize, spread_latency_targets

__all__ = ["SpecializeConfig", "RunSummary", "run_pipeline", "test_evaluator"]


@dataclass
class RunSummary:
    run_dir: Path
    space: Any
    chosen: list[Specialized]
    exports: list[Path]
    plot: Path | None
    predictor_report: str | None
    latency_table: Path


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
        memory_format=_memory_format(config),
    )


def _memory_format(config: TrainConfig) -> torch.memory_format:
    return torch.channels_last if config.channels_last else torch.contiguous_format


def _slug(target: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", target).strip("_")


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
) -> RunSummary:
    """Run (or continue) every step for ``config`` on ``data`` in ``run_dir``."""
    run_dir = Path(run_dir)
    say = _say(progress)
    settings = config.specialize
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)

    # 1. Train (resumes from the last complete checkpoint when there is one).
    if (run_dir / DONE_FILE).is_file():
        say(f"[1/6] supernet: reusing {run_dir / 'supernet'}")
    else:
        say("[1/6] training the supernet (progressive shrinking)")
        train(config, data, run_dir, resume=True, device=device, progress=progress)
    _, supernet = load_run(run_dir)
    memory_format = _memory_format(config)

    # 2. Accuracy dataset (resumable row by row).
    say(f"[2/6] accuracy dataset: {settings.acc_dataset_archs} sub-networks")
    dataset_path, rows = accuracy_dataset_for_run(
        run_dir,
        data,
        num_archs=settings.acc_dataset_archs,
        eval_images=settings.acc_eval_images,
        seed=config.seed,
        device=device,
        progress=progress,
    )

    # 3. Accuracy predictor.
    predictor_path = run_dir / "accuracy_predictor.pt"
    report = None
    if predictor_path.is_file():
        say(f"[3/6] accuracy predictor: reusing {predictor_path}")
        predictor = AccuracyPredictor.load(predictor_path, space=supernet.space)
    else:
        predictor, fit = fit_accuracy_predictor(
            supernet.space,
            [r["arch"] for r in rows],
            [r["accuracy"] for r in rows],
            epochs=settings.predictor_epochs,
            seed=config.seed,
        )
        predictor.save(predictor_path)
        report = str(fit)
        say(f"[3/6] accuracy predictor: {report}")

    # 4. Latency table on this device (MBConv families; OFA-ResNet targets MACs instead).
    table_path = run_dir / "latency_table.json"
    table = None
    if not isinstance(supernet.space, MBConvSpace):
        table_path = None
        say("[4/6] latency table: not available for this family; targets are on MACs")
    elif table_path.is_file():
        say(f"[4/6] latency table: reusing {table_path}")
        table = LatencyTable.load(table_path, supernet)
    else:
        say(f"[4/6] latency table ({settings.latency_backend}, this device)")
        table = LatencyTable.build(
            supernet,
            backend=settings.latency_backend,
            threads=settings.latency_threads,
            repeats=settings.latency_repeats,
            progress=progress,
        )
        table.save(table_path)

    # 5. Specialise and measure.
    costs = search_costs(supernet, table)
    metric = "macs" if table is None else "latency_ms"
    targets = settings.targets or spread_latency_targets(costs[metric], settings.num_targets)
    say(f"[5/6] specialising for {', '.join(targets)}")
    evaluator = test_evaluator(config, data)
    supernet = supernet.to(memory_format=memory_format)
    chosen = specialize(
        supernet,
        predictor,
        targets,
        latency_table=table,
        evaluator=evaluator,
        random_baseline=settings.random_baseline,
        seed=config.seed,
        generations=settings.generations,
        progress=progress,
    )
    (run_dir / "specialized.json").write_text(
        json.dumps([c.to_dict() for c in chosen], indent=1) + "\n"
    )
    plot = _plot(run_dir / "pareto.png", supernet, predictor, costs, table, rows, chosen)
    threads = (table.threads if table is not None else settings.latency_threads) or None

    # 6. Export.
    exports: list[Path] = []
    if settings.export:
        from .export import export_subnet

        say("[6/6] exporting the chosen sub-networks (safetensors + ONNX, checked)")
        for row in chosen:
            out = run_dir / "exports" / _slug(row.target)
            result = export_subnet(
                supernet,
                row.arch,
                out,
                calibration_loader=evaluator.batches("calibration", row.arch.r),
                test_loader=evaluator.batches("test", row.arch.r),
                n_calibration=config.bn_recal_images,
                threads=threads,
                extra_metadata={"source_run": str(run_dir), "target": row.target},
            )
            exports.append(result.out_dir)
    return RunSummary(run_dir, supernet.space, chosen, exports, plot, report, table_path)


def _plot(path, supernet, predictor, costs, table, rows, chosen) -> Path | None:
    """Pareto plot against table latency (MACs without a table); skipped (None) when
    matplotlib is missing."""
    from .export import MissingDependencyError
    from .plot import ChosenPoint, plot_pareto

    metric = "macs" if table is None else "latency_ms"
    front = pareto_search(
        supernet.space,
        predictor,
        costs[metric],
        generations=200,
        initial=[c.arch for c in chosen],
    )
    sampled = [(costs[metric].of(r["arch"]), r["accuracy"]) for r in rows]
    points = [
        ChosenPoint(
            (c.measured_latency_ms or c.predicted_latency_ms)
            if table is not None
            else costs["macs"].of(c.arch),
            c.measured_accuracy if c.measured_accuracy is not None else c.predicted_accuracy,
            c.target,
            c.predicted_accuracy,
        )
        for c in chosen
    ]
    try:
        return plot_pareto(
            path,
            sampled,
            list(zip(front.costs[metric].tolist(), front.accuracy.tolist())),
            points,
            cost_label=(
                "MACs"
                if table is None
                else f"latency measured on this device (ms, {table.backend})"
            ),
            title="sampled (held-out top-1), predicted front, chosen (test top-1)",
        )
    except MissingDependencyError:
        return None
