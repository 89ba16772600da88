"""Progressive shrinking: train a supernet stage by stage, resumably.

One :class:`Trainer` owns a run directory (its layout: :mod:`.run_dir`).

A position in the run is (stage, epoch, batch within the epoch, global step). The data
order and the sampled sub-networks are pure functions of (seed, stage, epoch, step), so a
run resumed from a checkpoint continues exactly where it stopped.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from .. import data as datamod
from ..arch import Arch, MBConvSpace
from ..errors import OnceForAllError, RunDirectoryError
from ..evaluation import SubnetEvaluator
from ..models import Supernet
from ..storage.checkpoint import load_latest_checkpoint, save_checkpoint
from .config import StageConfig, TrainConfig
from .distributed import (
    DistEnv,
    average_gradients,
    barrier,
    broadcast_buffers,
    check_consistent,
    digest,
    init_distributed,
)
from .losses import supernet_loss
from .metrics import MetricsLog, TimedIterator
from .rng_state import capture_rng_state, restore_rng_state
from .run_dir import DONE_FILE, build_supernet
from .schedule import (
    Position,
    SkipBatches,
    lr_at,
    peak_lr,
    stage_space,
    step_archs,
)

__all__ = ["Trainer", "TrainingDiverged", "train"]


class TrainingDiverged(OnceForAllError, RuntimeError):
    """The loss became NaN or infinite; nothing of that step was applied or saved."""


class Trainer:
    """Runs the stages of a :class:`TrainConfig` on a dataset into a run directory."""

    def __init__(
        self,
        config: TrainConfig,
        data: str,
        run_dir: str | Path,
        *,
        device: str | None = None,
        progress: bool = True,
        max_steps: int | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.env: DistEnv = init_distributed(device)
        self.device = self.env.device
        self.progress = progress and self.env.is_main
        self.max_steps = max_steps  # stop (after checkpointing) once global_step reaches it
        self.memory_format = (
            torch.channels_last if config.channels_last else torch.contiguous_format
        )
        torch.manual_seed(config.seed)

        splits = config.open_splits(data)
        self.train_set, self.holdout_set, self.test_set = splits.train, splits.holdout, splits.test
        self.num_classes = len(splits.classes)
        self.net: Supernet = build_supernet(config, self.num_classes).to(
            self.device, memory_format=self.memory_format
        )
        if config.zero_init_residual:  # a resumed run loads its weights over this
            self.net.zero_init_residual()
        self.evaluator = SubnetEvaluator(
            self.holdout_set,
            self.test_set,
            calibration_images=config.bn_recal_images,
            batch_size=max(256, config.batch_size),
            num_workers=config.num_workers,
            seed=config.seed,
            device=self.device,
            memory_format=self.memory_format,
        )
        self.teacher: nn.Module | None = None
        self.position = Position()
        self.last_validation: dict[str, float] = {}
        self.metrics = MetricsLog(self.run_dir, enabled=self.env.is_main)
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ state
    def _checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return {
            "model": self.net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "position": self.position.as_dict(),
            "stage_name": self.config.stages[self.position.stage].name,
            "rng": capture_rng_state(),
            "config": self.config.to_dict(),
        }

    def save(self, optimizer: torch.optim.Optimizer) -> Path | None:
        if not self.env.is_main:
            return None
        p = self.position
        tag = f"{self.config.stages[p.stage].name}-e{p.epoch}-b{p.batch}-s{p.global_step}"
        return save_checkpoint(
            self._checkpoint_dir(), tag, self._state(optimizer), keep=self.config.keep_checkpoints
        )

    def _resume(self) -> dict[str, Any] | None:
        found = load_latest_checkpoint(self._checkpoint_dir())
        if found is None:
            return None
        path, state = found
        self.net.load_state_dict(state["model"])
        self.position = Position(**state["position"])
        restore_rng_state(state["rng"])
        self._log({"type": "resume", "checkpoint": str(path), **self.position.as_dict()})
        if self.progress:
            tqdm.write(f"resumed from {path} ({self.position.as_dict()})")
        return state

    def _load_teacher(self) -> nn.Module:
        barrier(self.env)  # rank 0 may still be writing it
        found = load_latest_checkpoint(self.run_dir / "teacher")
        if found is None:
            raise RunDirectoryError(
                f"no teacher in {self.run_dir / 'teacher'}: distillation stages need the full "
                "network trained by the first stage of this run directory"
            )
        teacher = copy.deepcopy(self.net)
        teacher.load_state_dict(found[1]["model"])
        teacher.set_largest()
        teacher.eval().requires_grad_(False)
        return teacher

    def _save_weights(self, name: str, stage: str) -> None:
        if self.env.is_main:
            state = {"model": self.net.state_dict(), "stage": stage}
            save_checkpoint(self.run_dir / name, name, state, keep=1)

    def _continue_from(self, previous: str, first: str) -> None:
        """A run started at a later stage trains on from the supernet the earlier stages
        left in ``RUN_DIR/supernet`` (not from freshly initialised weights)."""
        found = load_latest_checkpoint(self.run_dir / "supernet")
        if found is None:
            raise RunDirectoryError(
                f"stage {first!r} trains on from the supernet of the stages before it, but "
                f"{self.run_dir / 'supernet'} holds none: run the earlier stages first"
            )
        path, state = found
        self.net.load_state_dict(state["model"])
        after = state.get("stage")
        if after != previous:
            warnings.warn(
                f"{path} holds the supernet after stage {after!r}, not after {previous!r} "
                f"(the stage before {first!r}); training on from it anyway",
                stacklevel=3,
            )
        self._log({"type": "continue", "from": str(path), "after_stage": after})

    def _log(self, record: dict[str, Any]) -> None:
        self.metrics.write(record)

    # ------------------------------------------------------------ the schedule
    def _optimizer(self, stage: StageConfig) -> torch.optim.SGD:
        decay, no_decay = [], []
        for param in self.net.parameters():
            (no_decay if param.ndim <= 1 else decay).append(param)
        return torch.optim.SGD(
            [
                {"params": decay, "weight_decay": self.config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self._peak_lr(stage),
            momentum=self.config.momentum,
            nesterov=self.config.nesterov,
        )

    def _peak_lr(self, stage: StageConfig) -> float:
        return peak_lr(stage, self.config.batch_size * self.env.world_size)

    # ------------------------------------------------------------------- data
    def _train_loader(self, epoch: int, skip: int) -> DataLoader:
        sampler = self._batch_sampler
        sampler.set_epoch(epoch)
        # A generator of its own, seeded per epoch: creating the loader then draws nothing
        # from the global RNG, so a resumed run's random stream matches the original's.
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return DataLoader(
            self.train_set,
            batch_sampler=SkipBatches(sampler, skip) if skip else sampler,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=generator,
            persistent_workers=False,
        )

    # --------------------------------------------------------------- training
    def run(self, stages: list[str] | None = None, resume: bool = False) -> dict[str, Any]:
        """Train the chosen stages (all by default); with ``resume``, continue from the
        last complete checkpoint of the run directory."""
        if self.env.is_main:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict()))
        names = [s.name for s in self.config.stages]
        wanted = names if stages is None else stages
        for name in wanted:
            self.config.stage(name)  # raises with the list of stages
        resumed = self._resume() if resume else None
        if resumed is None:
            first = names.index(wanted[0])
            self.position = Position(stage=first)
            if first > 0:
                self._continue_from(names[first - 1], wanted[0])
        # DistributedSampler even on one worker: its order is a pure function of
        # (seed, epoch), which is what makes resuming mid-epoch exact.
        self._batch_sampler = datamod.ElasticResolutionBatchSampler(
            DistributedSampler(
                self.train_set,
                num_replicas=self.env.world_size,
                rank=self.env.rank,
                shuffle=True,
                seed=self.config.seed,
                drop_last=True,
            ),
            batch_size=self.config.batch_size,
            resolutions=self.config.resolutions,
            seed=self.config.seed,
        )
        results: dict[str, Any] = {}
        while self.position.stage < len(names):
            stage = self.config.stages[self.position.stage]
            if stage.name not in wanted:
                self.position = Position(
                    stage=self.position.stage + 1, global_step=self.position.global_step
                )
                continue
            optimizer_state = resumed["optimizer"] if resumed else None
            finished = self._run_stage(stage, optimizer_state)
            resumed = None
            if not finished:  # max_steps reached
                results["stopped_at"] = self.position.as_dict()
                break
            results[stage.name] = self.last_validation
            self.position = Position(
                stage=self.position.stage + 1, global_step=self.position.global_step
            )
        if "stopped_at" not in results and stages is None and self.env.is_main:
            self._log({"type": "done", **results})
            (self.run_dir / DONE_FILE).write_text(json.dumps(results, indent=1) + "\n")
        return results

    def _run_stage(self, stage: StageConfig, optimizer_state: dict | None) -> bool:
        cfg = self.config
        pos = self.position
        space = stage_space(self.net.space, stage)
        if pos.stage_step == 0 and pos.batch == 0 and pos.epoch == 0 and stage.sort_channels:
            self.net.sort_channels()
        self.teacher = self._load_teacher() if stage.distill and cfg.kd_ratio > 0 else None
        optimizer = self._optimizer(stage)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        steps_per_epoch = len(self._batch_sampler)
        peak = self._peak_lr(stage)
        total_steps = max(1, math.ceil(stage.epochs * steps_per_epoch))
        num_epochs = math.ceil(total_steps / steps_per_epoch)
        autocast = (
            torch.autocast(self.device.type, dtype=getattr(torch, cfg.amp_dtype))
            if cfg.amp_dtype
            else nullcontext()
        )
        self._log(
            {
                "type": "stage_start",
                **pos.record(stage.name),
                "total_steps": total_steps,
                "lr": peak,
            }
        )
        arch_log: list[str] = []
        while pos.epoch < num_epochs:
            steps_left = total_steps - pos.stage_step
            epoch_len = min(steps_per_epoch - pos.batch, steps_left)
            loader = self._train_loader(pos.epoch, pos.batch)
            bar = tqdm(
                total=epoch_len,
                disable=not self.progress,
                dynamic_ncols=True,
                desc=f"{stage.name} epoch {pos.epoch + 1}/{num_epochs}",
            )
            self.net.train()
            seen, start = 0, time.perf_counter()
            running = {"loss": 0.0, "correct": 0, "count": 0}
            batches = TimedIterator(itertools.islice(loader, epoch_len))
            for images, labels in batches:
                images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
                labels = labels.to(self.device, non_blocking=True)
                lr = lr_at(peak, stage, pos.stage_step, steps_per_epoch, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                archs = step_archs(space, stage, cfg.seed, pos.stage, pos.stage_step)
                arch_log += [arch.to_json() for arch in archs]
                optimizer.zero_grad(set_to_none=True)
                step_loss, correct = self._train_step(stage, archs, images, labels, autocast)
                running["correct"] += correct
                running["count"] += len(labels) * len(archs)
                optimizer.step()
                broadcast_buffers(self.net, self.env)
                pos.batch += 1
                pos.stage_step += 1
                pos.global_step += 1
                seen += len(labels)
                running["loss"] += step_loss / stage.subnets_per_step
                elapsed = time.perf_counter() - start
                bar.update(1)
                bar.set_postfix(
                    loss=f"{step_loss / stage.subnets_per_step:.3f}",
                    acc=f"{100 * running['correct'] / max(1, running['count']):.1f}",
                    res=images.shape[-1],
                    lr=f"{lr:.4f}",
                    img_s=f"{seen * self.env.world_size / elapsed:.0f}",
                    data=f"{100 * batches.waited / elapsed:.0f}%",
                )
                if pos.global_step % 20 == 0:
                    self._log(
                        {
                            "type": "train",
                            **pos.record(stage.name),
                            "loss": step_loss / stage.subnets_per_step,
                            "lr": lr,
                            "resolution": images.shape[-1],
                            "images_per_s": seen * self.env.world_size / elapsed,
                            "data_wait_fraction": batches.waited / elapsed,
                        }
                    )
                if cfg.checkpoint_every_steps and pos.global_step % cfg.checkpoint_every_steps == 0:
                    self.save(optimizer)
                if self.max_steps is not None and pos.global_step >= self.max_steps:
                    bar.close()
                    self.save(optimizer)
                    return False
            bar.close()
            elapsed = time.perf_counter() - start
            epoch_record = {
                "type": "epoch",
                **pos.record(stage.name),
                "train_loss": running["loss"] / max(1, epoch_len),
                "train_top1": 100 * running["correct"] / max(1, running["count"]),
                "images_per_s": seen * self.env.world_size / max(elapsed, 1e-9),
                "data_wait_fraction": batches.waited / max(elapsed, 1e-9),
            }
            pos.epoch += 1
            pos.batch = 0
            consistency = check_consistent(
                self.env, params=digest(self.net), archs=digest(*arch_log)
            )
            arch_log.clear()
            self.last_validation = self.validate(space)
            self._log(
                {**epoch_record, "consistency": consistency, "validation": self.last_validation}
            )
            if self.progress:
                tqdm.write(self._format_validation(stage.name, epoch_record))
            self.save(optimizer)
        if not stage.distill:
            self._save_weights("teacher", stage.name)
        self._save_weights("supernet", stage.name)
        return True

    def _train_step(
        self,
        stage: StageConfig,
        archs: list[Arch],
        images: torch.Tensor,
        labels: torch.Tensor,
        autocast: Any,
    ) -> tuple[float, int]:
        """Accumulate the gradients of every sub-network of one step on one batch and
        average them over the workers (the caller zeroes them before and steps after).
        Returns the summed loss and the correct count. A non-finite loss raises before
        anything of the step reaches the weights."""
        cfg, pos = self.config, self.position
        teacher_probs = None
        if self.teacher is not None:
            with torch.no_grad(), autocast:
                teacher_probs = torch.softmax(self.teacher(images).float(), dim=1)
        step_loss, correct = 0.0, torch.zeros((), dtype=torch.long, device=images.device)
        for k, arch in enumerate(archs):
            self.net.set_active(arch)
            with autocast:
                logits = self.net(images)
            loss = supernet_loss(logits, labels, teacher_probs, cfg.label_smoothing, cfg.kd_ratio)
            value = loss.item()  # the one host sync per sub-network: the check needs it
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"loss is {value} at stage {stage.name!r}, epoch {pos.epoch}, global "
                    f"step {pos.global_step} (sub-network {k}: {arch}); nothing of this step "
                    f"was applied. The last good checkpoint is in {self._checkpoint_dir()}"
                )
            loss.backward()
            step_loss += value
            correct += (logits.argmax(1) == labels).sum()
        average_gradients(self.net, self.env)
        return step_loss, int(correct)

    # -------------------------------------------------------------- validation
    def validation_archs(self, space: MBConvSpace) -> dict[str, Arch]:
        """Smallest, largest and a fixed set of random sub-networks of the open space."""
        archs = {"smallest": space.smallest(), "largest": space.largest()}
        rng = random.Random(f"ofa-val-{self.config.seed}")
        for i in range(self.config.num_random_val_archs):
            archs[f"random{i}"] = space.sample(rng)
        return archs

    def validate(self, space: MBConvSpace) -> dict[str, float]:
        """Top-1 on the test split of each validation arch at each evaluation
        resolution, after BN recalibration on held-out training images (rank 0 only)."""
        if not self.env.is_main:
            return {}
        archs = self.validation_archs(space)
        return self.evaluator.run(self.net, archs, self.config.eval_resolutions)

    def _format_validation(self, stage: str, record: dict[str, Any]) -> str:
        parts = "  ".join(f"{k} {v:.1f}" for k, v in self.last_validation.items())
        return (
            f"[{stage}] epoch {record['epoch']}: train loss {record['train_loss']:.3f}, "
            f"{record['images_per_s']:.0f} img/s ({100 * record['data_wait_fraction']:.0f} % "
            f"waiting for data) | test top-1: {parts}"
        )


def train(
    config: TrainConfig,
    data: str,
    run_dir: str | Path,
    *,
    stages: list[str] | None = None,
    resume: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Train ``config``'s stages on ``data`` into ``run_dir``; see :class:`Trainer`."""
    return Trainer(config, data, run_dir, **kwargs).run(stages=stages, resume=resume)
