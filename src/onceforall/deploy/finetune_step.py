"""``ofa finetune``: train one chosen sub-network on by itself, then export it.

The network starts as the export would have it (extracted from the run's supernet and
BN-recalibrated on the run's held-out images), or from an export folder (``start_from``,
an imported authors' network included); the teacher is the run's largest sub-network,
BN-recalibrated at the same resolution. Checkpoints and ``metrics.jsonl`` go to
``RUN/finetune/<name of the export folder>/``, so that a killed fine-tuning resumes
(``resume``); the result is an ordinary export folder whose ``metadata.json`` records the
fine-tuning (``finetune``: epochs, lr, teacher, steps, top-1 before and after).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError
from ..evaluation import recalibrate_bn
from ..models import Supernet
from ..storage.export_folder import METADATA, load_exported
from ..storage.run_guard import run_lock
from ..storage.run_layout import RunLayout
from ..training.config import TrainConfig
from ..training.finetune import FinetuneSettings, finetune, finetuned_arch
from ..training.run_dir import supernet_digest
from .export import ExportResult, check_export_target, write_export
from .run_inputs import evaluator_for_run

__all__ = ["finetune_step", "finetune_winners", "finetune_work_dir"]


def finetune_work_dir(run: RunLayout, out: str | os.PathLike) -> Path:
    """Where the fine-tuning that writes the export ``out`` keeps its checkpoints."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(out).resolve().name).strip("_") or "export"
    return run.root / "finetune" / name


def finetune_step(
    supernet: Supernet,
    config: TrainConfig,
    run: RunLayout,
    out: str | os.PathLike,
    settings: FinetuneSettings,
    *,
    data: str,
    arch: Any = None,
    start_from: str | os.PathLike | None = None,
    distill: bool = True,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    threads: int | None = None,
) -> ExportResult | None:
    """Fine-tune ``arch`` of the run's supernet (or the network exported in
    ``start_from``) and export it to ``out``; None on torchrun workers other than rank 0
    and where ``max_steps`` stopped the fine-tuning before its end."""
    if (arch is None) == (start_from is None):
        raise ConfigError("give the arch to fine-tune or an export to start from, not both")
    check_export_target(out)  # now, not after the training
    main_process = int(os.environ.get("RANK", "0")) == 0
    with run_lock(run.root) if main_process else nullcontext():
        evaluator = evaluator_for_run(config, data)
        if start_from is None:
            arch = supernet.parse_arch(arch)
            calibration = evaluator.batches("calibration", arch.r)
            start = recalibrate_bn(supernet, arch, calibration, evaluator.calibration_images)
            macs, params = supernet.macs(arch), supernet.params(arch)
            source: dict[str, Any] = {"start": "extracted from the supernet"}
        else:
            start = load_exported(start_from)
            arch = start.arch
            written = json.loads((Path(start_from) / METADATA).read_bytes())
            macs, params = written["macs"], written["params"]
            source = {"start": str(start_from)}
            classes = getattr(start.config, "num_classes", None)
            if classes != supernet.config.num_classes:
                raise ConfigError(
                    f"{start_from} classifies {classes} classes; the run's supernet "
                    f"{supernet.config.num_classes}: fine-tune it with a run of its dataset"
                )
        teacher = None
        if distill and config.kd_ratio > 0:
            largest = supernet.space.largest()  # its resolution does not matter: the images do
            calibration = evaluator.batches("calibration", arch.r)
            teacher = recalibrate_bn(supernet, largest, calibration, evaluator.calibration_images)
            source["teacher"] = f"the run's largest sub-network ({largest.to_json()})"
        outcome = finetune(
            start.train(),
            config,
            data,
            finetune_work_dir(run, out),
            settings,
            teacher=teacher,
            resume=resume,
            device=device,
            progress=progress,
            max_steps=max_steps,
        )
        if outcome.network is None:
            return None
        record = {
            **source,
            "epochs": settings.epochs,
            "lr": settings.lr,
            "warmup_epochs": settings.warmup_epochs,
            "batch_size": config.batch_size,
            "label_smoothing": config.label_smoothing,
            "kd_ratio": config.kd_ratio if teacher is not None else 0.0,
            "steps": outcome.steps,
            "top1_before": outcome.top1_before,
            "top1_after": outcome.top1_after,
        }
        return write_export(
            outcome.network,
            out,
            macs=macs,
            params=params,
            supernet_name=getattr(supernet, "name", type(supernet).__name__),
            accuracy=outcome.test_metrics,
            bn_calibration_images=outcome.calibration_images,
            threads=threads,
            extra_metadata={
                "source_run": str(run.root),
                "supernet_sha256": supernet_digest(run.root),
                "finetune": record,
            },
        )


def finetune_winners(
    config: TrainConfig,
    data: str | os.PathLike,
    layout: RunLayout,
    supernet: Supernet,
    chosen: Sequence[Any],
    say: Callable[[str], None],
    device: str | None,
    progress: bool,
) -> list[Path]:
    """``ofa run``'s step: fine-tune each chosen sub-network (``specialize.finetune_epochs``)
    into ``exports/<target>_finetuned``; a killed run resumes each where it stopped, a
    finished one is reused. Returns the export folders."""
    settings = config.specialize
    recipe = FinetuneSettings(epochs=settings.finetune_epochs, lr=settings.finetune_lr)
    say(f"fine-tuning the chosen sub-networks for {recipe.epochs:g} epochs (lr {recipe.lr:g})")
    written = []
    digest = supernet_digest(layout.root)
    for row in chosen:
        out = layout.export(f"{row.target} finetuned")
        if _finetuned_already(out, row.arch, recipe, digest):
            say(f"  {row.target}: reusing {out}")
            written.append(out)
            continue
        work = finetune_work_dir(layout, out)
        if finetuned_arch(work) not in (None, row.arch.to_dict()):
            shutil.rmtree(work)  # another winner's fine-tuning (the target's choice changed)
        result = finetune_step(
            supernet,
            config,
            layout,
            out,
            recipe,
            data=str(data),
            arch=row.arch,
            resume=True,
            device=device,
            progress=progress,
        )
        if result is not None:
            record = result.metadata["finetune"]
            say(
                f"  {row.target}: test top-1 {record['top1_before']:.2f} % -> "
                f"{record['top1_after']:.2f} % ({result.out_dir})"
            )
            written.append(result.out_dir)
    return written


def _finetuned_already(out: Path, arch: Any, recipe: FinetuneSettings, digest: str) -> bool:
    """Whether ``out`` is the export of this fine-tuning already: the same arch, epochs
    and lr, from the same supernet (a rerun of ``ofa run`` does not train it again)."""
    try:
        metadata = json.loads((out / "metadata.json").read_text())
        record = metadata["finetune"]
        return (
            metadata["arch"] == arch.to_dict()
            and metadata.get("supernet_sha256") == digest
            and (record["epochs"], record["lr"]) == (recipe.epochs, recipe.lr)
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False  # absent or not that export: fine-tune (an unreadable one is replaced)
