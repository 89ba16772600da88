"""Fine-tuning one chosen sub-network (the paper's ``finetune@25`` / ``@75`` networks).

After search, the extracted static sub-network trains on by itself: label-smoothed
cross-entropy plus distillation from a frozen teacher (the run's largest sub-network),
cosine learning rate with warm-up, no weight decay on biases and BN. It is one stage of
the machinery that trains supernets, run on a plain network: the same epoch runner
(:mod:`.epoch`: NaN stop, gradients averaged across torchrun workers, periodic atomic
checkpoints), the same data order (a pure function of seed and epoch, so ``resume``
after a kill continues bit for bit), the same progress bar and ``metrics.jsonl``
(:mod:`.reporting`). The work folder holds the checkpoints and the metrics; the result
is an ordinary export folder (:func:`~onceforall.deploy.export.write_export`) whose
metadata records the fine-tuning and the test top-1 before and after.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..arch import ArchValue
from ..errors import ConfigError, check_whole_number
from ..evaluation import SubnetEvaluator, evaluate, recalibrate_bn
from ..storage.run_layout import RunLayout
from .checkpointing import Checkpointer
from .config import StageConfig, TrainConfig
from .distributed import (
    DistEnv,
    barrier,
    check_consistent,
    deterministic_kernels,
    digest,
    init_distributed,
)
from .epoch import EpochRunner, StagePlan
from .loading import sgd, train_batch_sampler, train_loader
from .reporting import Reporter
from .rng_state import restore_rng_state
from .schedule import Position, peak_lr

__all__ = ["FinetuneOutcome", "FinetuneSettings", "SingleArch", "StaticTrainee", "finetune"]

STAGE = "finetune"  # the one stage's name, in checkpoints and metrics


@dataclass(frozen=True)
class FinetuneSettings:
    """The fine-tuning recipe: ``lr`` per 64 images (scaled to the global batch, as the
    run's stages), ``epochs`` may be fractional; the rest (batch size, label smoothing,
    distillation ratio, weight decay, seed, workers, checkpoint interval) is the run's."""

    epochs: float = 3.0  # measured: about twice the gain of 1 (docs/benchmarks.md)
    lr: float = 0.005
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        for name in ("epochs", "lr"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive number, not {getattr(self, name)}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ConfigError(
                f"warmup_epochs must be at least 0 and less than epochs ({self.epochs}), not "
                f"{self.warmup_epochs}"
            )


@dataclass(frozen=True)
class FinetuneOutcome:
    """What a fine-tuning measured: test top-1 (percent) of the starting network and of
    the fine-tuned one (both BN-recalibrated on the same held-out images), its steps;
    ``network`` the fine-tuned network (None on workers other than rank 0, or where
    ``max_steps`` stopped it before the end)."""

    top1_before: float | None
    top1_after: float | None
    steps: int
    network: nn.Module | None
    test_metrics: dict[str, float] | None
    calibration_images: int


class SingleArch:
    """The space of the fine-tuning stage: the one network, which every step trains."""

    def __init__(self, arch: ArchValue) -> None:
        self.arch = arch

    def sample(self, rng: Any) -> ArchValue:
        return self.arch

    def largest(self) -> ArchValue:
        return self.arch


class StaticTrainee(nn.Module):
    """A static network where the epoch runner expects a supernet (``set_active``
    changes nothing: there is one network)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def set_active(self, arch: ArchValue) -> ArchValue:
        return arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


def finetuned_arch(work_dir: str | Path) -> dict | None:
    """The arch the fine-tuning in ``work_dir`` trains (its ``metrics.jsonl`` says), or
    None where there is none or it cannot be read."""
    try:
        lines = RunLayout(work_dir).metrics.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(record, dict) and record.get("type") == "finetune":
            return record.get("arch")
    return None


def finetune(
    start: nn.Module,
    config: TrainConfig,
    data: str,
    work_dir: str | Path,
    settings: FinetuneSettings,
    *,
    teacher: nn.Module | None = None,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    max_steps: int | None = None,
) -> FinetuneOutcome:
    """Train the static network ``start`` (with ``arch``; BN as it should start) on the
    run's training split of ``data`` at its resolution, distilling from ``teacher`` where
    given; checkpoints and ``metrics.jsonl`` go to ``work_dir``. With ``resume``, continue
    from its last complete checkpoint. With ``config.deterministic``, on deterministic
    kernels only (a GPU run then resumes bit-identically)."""
    if max_steps is not None:
        check_whole_number("max_steps", max_steps, 1)
    with deterministic_kernels(config.deterministic):
        return _finetune(
            start, config, data, work_dir, settings, teacher, resume, device, progress, max_steps
        )


def _finetune(
    start: nn.Module,
    config: TrainConfig,
    data: str,
    work_dir: str | Path,
    settings: FinetuneSettings,
    teacher: nn.Module | None,
    resume: bool,
    device: str | None,
    progress: bool,
    max_steps: int | None,
) -> FinetuneOutcome:
    work = RunLayout(work_dir)
    env = init_distributed(device)
    torch.manual_seed(config.seed)
    arch = start.arch
    stage = StageConfig(
        STAGE,
        epochs=settings.epochs,
        lr=settings.lr,
        warmup_epochs=settings.warmup_epochs,
        distill=teacher is not None,
    )
    cfg = dataclasses.replace(
        config, resolutions=[arch.r], eval_resolutions=[arch.r], stages=[stage]
    )
    splits = cfg.open_splits(data)
    evaluator = SubnetEvaluator(
        splits.holdout,
        splits.test,
        calibration_images=cfg.bn_recal_images,
        batch_size=max(256, cfg.batch_size),
        num_workers=cfg.num_workers,
        seed=cfg.seed,
        device=env.device,
    )
    top1_before = _test_top1(start, evaluator, env)
    if env.is_main:
        work.root.mkdir(parents=True, exist_ok=True)
    trainee = StaticTrainee(start).to(env.device)
    checkpoints = Checkpointer(work, cfg, trainee, enabled=env.is_main)
    reporter = Reporter(work, enabled=env.is_main, progress=progress and env.is_main)
    pos, optimizer_state = Position(), None
    found = checkpoints.latest()
    if found is not None and not resume:
        raise ConfigError(
            f"{work.checkpoints} holds the checkpoints of a fine-tuning: resume it "
            "(--resume), or delete the folder to start over"
        )
    trained = finetuned_arch(work.root)
    if found is not None and trained is not None and trained != arch.to_dict():
        raise ConfigError(
            f"{work.checkpoints} holds the checkpoints of a fine-tuning of another arch "
            f"({trained}): delete {work.root} to start over, or choose another --out"
        )
    if found is not None:
        path, state = found
        trainee.load_state_dict(state["model"])
        pos = Position(**state["position"])
        optimizer_state = state["optimizer"]
        restore_rng_state(state["rng"])
        reporter.resumed(path, pos)
    sampler = train_batch_sampler(splits.train, cfg, env)
    steps_per_epoch = len(sampler)
    total = max(1, math.ceil(settings.epochs * steps_per_epoch))
    lr = peak_lr(stage, cfg.batch_size * env.world_size)
    plan = StagePlan(stage, SingleArch(arch), lr, steps_per_epoch, total)
    optimizer = sgd(trainee.parameters(), cfg, plan.peak_lr, optimizer_state)
    if teacher is not None:
        teacher = teacher.to(env.device).eval().requires_grad_(False)
    runner = EpochRunner(
        trainee, optimizer, cfg, env, checkpoints, teacher=teacher, max_steps=max_steps
    )
    if pos.global_step == 0:
        reporter.stage_start(STAGE, pos, plan)
        reporter.log({"type": "finetune", "arch": arch.to_dict(), "top1_before": top1_before})
    try:
        while pos.epoch < plan.num_epochs:
            loader = train_loader(splits.train, sampler, cfg, env.device, pos.epoch, pos.batch)
            with reporter.epoch(STAGE, pos, plan) as bar:
                stats = runner.run(plan, pos, loader, on_step=bar.step)
            if stats.stopped:
                return FinetuneOutcome(top1_before, None, pos.global_step, None, None, 0)
            pos.epoch, pos.batch = pos.epoch + 1, 0
            consistency = check_consistent(env, params=digest(trainee), archs=digest(*stats.archs))
            epoch_top1 = _test_top1(trainee.network, evaluator, env, recalibrate=False)
            test = {} if epoch_top1 is None else {f"top1@{arch.r}": epoch_top1}
            reporter.epoch_end(STAGE, stats, consistency, test)
            checkpoints.save(optimizer, pos)
        return _finish(trainee.network, evaluator, env, top1_before, pos, reporter)
    finally:
        reporter.close()


def _finish(
    network: nn.Module,
    evaluator: SubnetEvaluator,
    env: DistEnv,
    top1_before: float | None,
    pos: Position,
    reporter: Reporter,
) -> FinetuneOutcome:
    """The fine-tuned network, its BN statistics recalibrated on the held-out images (as
    every export's are) and its test top-1, on rank 0."""
    barrier(env)
    if not env.is_main:
        return FinetuneOutcome(top1_before, None, pos.global_step, None, None, 0)
    final = copy.deepcopy(network).cpu()
    r = final.arch.r
    started = time.perf_counter()
    calibration = evaluator.batches("calibration", r)
    final = recalibrate_bn(final, None, calibration, evaluator.calibration_images).eval()
    metrics = evaluate(final, evaluator.batches("test", r))
    reporter.log(
        {
            "type": "done",
            "top1_before": top1_before,
            "top1_after": metrics["top1"],
            "steps": pos.global_step,
            "evaluation_s": time.perf_counter() - started,
        }
    )
    reporter.note(f"test top-1 {top1_before:.2f} % before, {metrics['top1']:.2f} % after")
    images = min(evaluator.calibration_images, len(evaluator.calibration_set))
    return FinetuneOutcome(top1_before, metrics["top1"], pos.global_step, final, metrics, images)


@torch.no_grad()
def _test_top1(
    network: nn.Module, evaluator: SubnetEvaluator, env: DistEnv, *, recalibrate: bool = True
) -> float | None:
    """Test-split top-1 of ``network`` on rank 0 (None elsewhere): BN recalibrated on the
    held-out images first (on a copy), or with the statistics it has."""
    if not env.is_main:
        return None
    r = network.arch.r
    was_training = network.training
    if recalibrate:
        calibration = evaluator.batches("calibration", r)
        copied = copy.deepcopy(network).cpu()
        network = recalibrate_bn(copied, None, calibration, evaluator.calibration_images)
    top1 = evaluate(network, evaluator.batches("test", r), device=env.device)["top1"]
    network.train(was_training)
    return top1
