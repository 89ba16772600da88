"""One epoch of progressive shrinking: the optimiser steps over the epoch's batches.

Each step sets the learning rate of its position, trains the sub-networks the position
names (:func:`.step_archs`) on one batch, steps the optimiser, broadcasts the BN buffers,
advances the :class:`.Position`, and checkpoints when due. The epoch stops early (after a
checkpoint) once the run reaches ``max_steps``. What the epoch measured comes back as
:class:`EpochStats`; showing and logging it is the caller's (:mod:`.reporting`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..arch import Arch
from ..errors import OnceForAllError
from ..models import Supernet
from .checkpointing import Checkpointer
from .config import StageConfig, TrainConfig
from .distributed import DistEnv, average_gradients, broadcast_buffers
from .losses import soft_cross_entropy, supernet_loss
from .metrics import TimedIterator
from .schedule import Position, lr_at, stage_space, step_archs

__all__ = [
    "EpochRunner",
    "EpochStats",
    "StagePlan",
    "StepCallback",
    "StepResult",
    "TrainingDiverged",
]


class TrainingDiverged(OnceForAllError, RuntimeError):
    """The loss became NaN or infinite; nothing of that step was applied or saved."""


@dataclass(frozen=True)
class StagePlan:
    """What stays fixed over a stage's epochs: the space it opens, its peak learning rate
    and its length in optimiser steps."""

    stage: StageConfig
    space: Any  # the stage's open part of the supernet's space (stage_space)
    peak_lr: float
    steps_per_epoch: int
    total_steps: int

    @classmethod
    def of(
        cls, stage: StageConfig, supernet_space: Any, peak_lr: float, steps_per_epoch: int
    ) -> StagePlan:
        """The plan of ``stage`` on a supernet of ``supernet_space`` (``epochs`` may be
        fractional: a stage trains at least one step)."""
        total = max(1, math.ceil(stage.epochs * steps_per_epoch))
        return cls(stage, stage_space(supernet_space, stage), peak_lr, steps_per_epoch, total)

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def epoch_length(self, pos: Position) -> int:
        """The steps the epoch at ``pos`` has left (the stage's last may end early)."""
        return min(self.steps_per_epoch - pos.batch, self.total_steps - pos.stage_step)

    def lr(self, stage_step: int) -> float:
        """The learning rate of step ``stage_step`` of the stage."""
        return lr_at(self.peak_lr, self.stage, stage_step, self.steps_per_epoch, self.total_steps)


@dataclass(frozen=True)
class StepResult:
    """What one optimiser step reports."""

    loss: float  # mean over the step's sub-networks
    lr: float
    resolution: int


@dataclass
class EpochStats:
    """The running tallies of one epoch on this worker; final once the epoch returns."""

    planned_steps: int  # the steps the epoch was to run from where it started
    world_size: int = 1
    steps: int = 0
    images: int = 0  # on this worker
    loss_sum: float = 0.0  # of the steps' mean losses over their sub-networks
    correct: int = 0  # over every sub-network of every step
    count: int = 0
    elapsed: float = 0.0  # seconds since the epoch started
    waited: float = 0.0  # of them, waiting for data
    stopped: bool = False  # max_steps ended the epoch early
    archs: list[str] = field(default_factory=list)  # what each step trained, in order
    end: Position | None = None  # where the epoch ended

    @property
    def train_loss(self) -> float:
        return self.loss_sum / max(1, self.planned_steps)

    @property
    def train_top1(self) -> float:
        return 100 * self.correct / max(1, self.count)

    @property
    def images_per_s(self) -> float:
        """Over all workers."""
        return self.images * self.world_size / max(self.elapsed, 1e-9)

    @property
    def data_wait_fraction(self) -> float:
        return self.waited / max(self.elapsed, 1e-9)

    @property
    def data_wait_percent(self) -> float:
        return 100 * self.waited / max(self.elapsed, 1e-9)


# Called after every step with the position after it, the step and the epoch so far.
StepCallback = Callable[[Position, StepResult, EpochStats], None]


@dataclass
class EpochRunner:
    """Runs the epochs of one stage with one optimiser (see the module docstring). ``net``
    is the supernet, or for fine-tuning one static network that ``set_active`` leaves as
    it is (:class:`~.finetune.StaticTrainee`)."""

    net: Supernet | nn.Module
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    env: DistEnv
    checkpoints: Checkpointer
    teacher: nn.Module | None = None
    memory_format: torch.memory_format = torch.contiguous_format
    max_steps: int | None = None  # stop (after checkpointing) once global_step reaches it
    autocast: Any = field(default_factory=nullcontext)

    def run(
        self, plan: StagePlan, pos: Position, batches: Iterable, on_step: StepCallback
    ) -> EpochStats:
        """Train the rest of the epoch at ``pos`` (advancing it in place) on ``batches``,
        which start at ``pos.batch``; call ``on_step`` after every step."""
        stats = EpochStats(planned_steps=plan.epoch_length(pos), world_size=self.env.world_size)
        self.net.train()
        start = time.perf_counter()
        timed = TimedIterator(itertools.islice(batches, stats.planned_steps))
        for images, labels in timed:
            step = self._step(plan, pos, images, labels, stats)
            stats.elapsed, stats.waited = time.perf_counter() - start, timed.waited
            on_step(pos, step, stats)
            if self.checkpoints.due(pos.global_step):
                self.checkpoints.save(self.optimizer, pos)
            if self.max_steps is not None and pos.global_step >= self.max_steps:
                self.checkpoints.save(self.optimizer, pos)
                stats.stopped = True
                break
        stats.elapsed, stats.waited = time.perf_counter() - start, timed.waited
        stats.end = dataclasses.replace(pos)
        return stats

    def _step(
        self,
        plan: StagePlan,
        pos: Position,
        images: torch.Tensor,
        labels: torch.Tensor,
        stats: EpochStats,
    ) -> StepResult:
        device = self.env.device
        images = images.to(device, non_blocking=True, memory_format=self.memory_format)
        labels = labels.to(device, non_blocking=True)
        lr = plan.lr(pos.stage_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        archs = step_archs(plan.space, plan.stage, self.config.seed, pos.stage, pos.stage_step)
        stats.archs += [arch.to_json() for arch in archs]
        self.optimizer.zero_grad(set_to_none=True)
        step_loss, correct = self.train_step(plan.stage, pos, archs, images, labels)
        stats.correct += correct
        stats.count += len(labels) * len(archs)
        self.optimizer.step()
        broadcast_buffers(self.net, self.env)
        pos.batch += 1
        pos.stage_step += 1
        pos.global_step += 1
        stats.steps += 1
        stats.images += len(labels)
        loss = step_loss / plan.stage.subnets_per_step
        stats.loss_sum += loss
        return StepResult(loss=loss, lr=lr, resolution=images.shape[-1])

    def train_step(
        self,
        stage: StageConfig,
        pos: Position,
        archs: list[Arch],
        images: torch.Tensor,
        labels: torch.Tensor,
    ) -> tuple[float, int]:
        """Accumulate the gradients of every sub-network of one step on one batch and
        average them over the workers (the caller zeroes them before and steps after).
        Returns the summed loss and the correct count. A non-finite loss raises before
        anything of the step reaches the weights."""
        cfg, autocast = self.config, self.autocast
        teacher_probs = None
        if self.teacher is not None:
            with torch.no_grad(), autocast:
                teacher_probs = torch.softmax(self.teacher(images).float(), dim=1)
        step_loss, correct = 0.0, torch.zeros((), dtype=torch.long, device=images.device)
        for k, arch in enumerate(archs):
            self.net.set_active(arch)
            with autocast:
                logits = self.net(images)
            if stage.inplace_distill and k > 0:  # the step's largest (k = 0) teaches
                loss = soft_cross_entropy(logits.float(), teacher_probs)
            else:
                loss = supernet_loss(
                    logits, labels, teacher_probs, cfg.label_smoothing, cfg.kd_ratio
                )
            if stage.inplace_distill and k == 0:
                teacher_probs = torch.softmax(logits.detach().float(), dim=1)
            value = loss.item()  # the one host sync per sub-network: the check needs it
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"loss is {value} at stage {stage.name!r}, epoch {pos.epoch}, global "
                    f"step {pos.global_step} (sub-network {k}: {arch}); nothing of this step "
                    f"was applied. The last good checkpoint is in {self.checkpoints.directory}"
                )
            loss.backward()
            step_loss += value
            correct += (logits.argmax(1) == labels).sum()
        average_gradients(self.net, self.env)
        return step_loss, int(correct)
