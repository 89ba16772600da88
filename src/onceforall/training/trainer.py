"""Progressive shrinking: train a supernet stage by stage, resumably.

One :class:`Trainer` owns a run directory (its paths: :class:`.RunLayout`). It runs the
stages; the parts of a stage are elsewhere: one epoch of optimiser steps
(:mod:`.epoch`), the progress bar and metrics log (:mod:`.reporting`), and when and what
to save (:mod:`.checkpointing`).

A position in the run is (stage, epoch, batch within the epoch, global step). The data
order and the sampled sub-networks are pure functions of (seed, stage, epoch, step), so a
run resumed from a checkpoint continues exactly where it stopped.
"""

from __future__ import annotations

import copy
import random
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import data as datamod
from ..arch import Arch, MBConvSpace
from ..errors import ConfigError, RunDirectoryError, check_whole_number
from ..evaluation import SubnetEvaluator
from ..models import Supernet
from ..storage.atomic import check_folder_target
from ..storage.checkpoint import load_latest_checkpoint
from ..storage.run_guard import claim_run_directory, run_lock
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
from .epoch import EpochRunner, EpochStats, StagePlan, StepResult, TrainingDiverged
from .forecast import Forecast, PlannedWork, TrainingForecaster, TrainingWork
from .loading import sgd, train_batch_sampler, train_loader
from .reporting import Reporter
from .rng_state import restore_rng_state
from .run_dir import build_supernet, check_can_train, write_run_config, write_training_done
from .schedule import Position, peak_lr, stage_space

__all__ = ["Trainer", "TrainingDiverged", "train"]


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
        forecast: Forecast | None = None,
        forecast_later: Callable[[Supernet, int], list[PlannedWork]] | None = None,
    ) -> None:
        self.config = config
        self.layout = RunLayout(run_dir)
        self.run_dir = self.layout.root
        check_folder_target(self.run_dir, "run directory")
        if max_steps is not None:
            check_whole_number("max_steps", max_steps, 1)
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
        if self.num_classes < 2:
            raise ConfigError(
                f"the dataset {data} has {self.num_classes} class(es) "
                f"({', '.join(map(str, splits.classes)) or 'none'}): classification needs two "
                "or more"
            )
        self.net: Supernet = build_supernet(config, self.num_classes).to(
            self.device, memory_format=self.memory_format
        )
        for stage in config.stages:  # every stage's choices exist in this supernet
            stage_space(self.net.space, stage)
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
        self.last_test_top1: dict[str, float] = {}  # after the last epoch, per test arch
        self.checkpoints = Checkpointer(self.layout, config, self.net, enabled=self.env.is_main)
        self.reporter = Reporter(self.layout, enabled=self.env.is_main, progress=self.progress)
        # How long the rest will take (``ofa run`` passes one holding its later steps).
        self.forecast = forecast if forecast is not None else Forecast()
        self._forecast_later = forecast_later  # (supernet, test images) -> later steps
        self.forecast_window = (3, 13)  # the steps the first forecast times
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ state
    def save(self, optimizer: torch.optim.Optimizer) -> Path | None:
        """A checkpoint at the current position (None on workers that do not write)."""
        return self.checkpoints.save(optimizer, self.position)

    def _resume(self) -> dict[str, Any] | None:
        found = self.checkpoints.latest()
        if found is None:
            return None
        path, state = found
        self.net.load_state_dict(state["model"])
        self.position = Position(**state["position"])
        restore_rng_state(state["rng"])
        self.reporter.resumed(path, self.position)
        return state

    def _load_teacher(self) -> nn.Module:
        barrier(self.env)  # rank 0 may still be writing it
        found = load_latest_checkpoint(self.layout.teacher)
        if found is None:
            raise RunDirectoryError(
                f"no teacher in {self.layout.teacher}: distillation stages need the full "
                "network trained by the first stage of this run directory"
            )
        teacher = copy.deepcopy(self.net)
        teacher.load_state_dict(found[1]["model"])
        teacher.set_largest()
        teacher.eval().requires_grad_(False)
        return teacher

    def _continue_from(self, previous: str, first: str) -> None:
        """A run started at a later stage trains on from the supernet the earlier stages
        left in ``RUN_DIR/supernet`` (not from freshly initialised weights)."""
        found = load_latest_checkpoint(self.layout.supernet)
        if found is None:
            raise RunDirectoryError(
                f"stage {first!r} trains on from the supernet of the stages before it, but "
                f"{self.layout.supernet} holds none: run the earlier stages first"
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
        self.reporter.continued(path, after)

    # ------------------------------------------------------------ the schedule
    def _optimizer(self, stage: StageConfig, state: dict | None) -> torch.optim.SGD:
        """SGD for ``stage`` (no weight decay on biases and BN), restored from ``state``."""
        return sgd(self.net.parameters(), self.config, self._peak_lr(stage), state)

    def _peak_lr(self, stage: StageConfig) -> float:
        return peak_lr(stage, self.config.batch_size * self.env.world_size)

    def _epoch_runner(self, optimizer: torch.optim.Optimizer) -> EpochRunner:
        cfg = self.config
        autocast = (
            torch.autocast(self.device.type, dtype=getattr(torch, cfg.amp_dtype))
            if cfg.amp_dtype
            else nullcontext()
        )
        return EpochRunner(
            self.net,
            optimizer,
            cfg,
            self.env,
            self.checkpoints,
            teacher=self.teacher,
            memory_format=self.memory_format,
            max_steps=self.max_steps,
            autocast=autocast,
        )

    # ------------------------------------------------------------------- data
    def _make_batch_sampler(self) -> datamod.ElasticResolutionBatchSampler:
        return train_batch_sampler(self.train_set, self.config, self.env)

    def _train_loader(self, epoch: int, skip: int) -> DataLoader:
        return train_loader(
            self.train_set, self._batch_sampler, self.config, self.device, epoch, skip
        )

    # --------------------------------------------------------------- training
    def run(self, stages: list[str] | None = None, resume: bool = False) -> dict[str, Any]:
        """Train the chosen stages (all by default); with ``resume``, continue from the
        last complete checkpoint of the run directory. Returns the test-split top-1 of
        each stage trained, or where ``max_steps`` stopped the run (``stopped_at``)."""
        with (
            run_lock(claim_run_directory(self.run_dir).root) if self.env.is_main else nullcontext(),
            deterministic_kernels(self.config.deterministic),
        ):
            return self._run(stages, resume)

    def _run(self, stages: list[str] | None, resume: bool) -> dict[str, Any]:
        names = [s.name for s in self.config.stages]
        wanted = names if stages is None else stages
        for name in wanted:
            self.config.stage(name)  # raises with the list of stages
        check_can_train(self.run_dir, self.config, resume=resume, whole=stages is None)
        if self.env.is_main:
            write_run_config(self.run_dir, self.config)
        try:
            resumed = self._resume() if resume else None
            if resumed is not None and self.max_steps is not None:
                if self.max_steps <= self.position.global_step:
                    raise ConfigError(
                        f"--max-steps {self.max_steps} is not beyond the step the run "
                        f"resumes at ({self.position.global_step})"
                    )
            if resumed is None:
                first = names.index(wanted[0])
                self.position = Position(stage=first)
                if first > 0:
                    self._continue_from(names[first - 1], wanted[0])
            self._batch_sampler = self._make_batch_sampler()
            self._forecaster = self._make_forecaster(wanted)
            results = self._run_stages(wanted, resumed)
            if "stopped_at" not in results:
                self.reporter.note(f"training took {self.forecast.summary(wanted)}")
            if "stopped_at" not in results and stages is None and self.env.is_main:
                self.reporter.done(results)
                write_training_done(self.run_dir, results)
            return results
        finally:
            self.reporter.close()  # the TensorBoard files hold every record, even on errors

    def _run_stages(self, wanted: list[str], resumed: dict[str, Any] | None) -> dict[str, Any]:
        """From the current position, run each stage in ``wanted`` (skipping the others)."""
        results: dict[str, Any] = {}
        while self.position.stage < len(self.config.stages):
            stage = self.config.stages[self.position.stage]
            if stage.name in wanted:
                optimizer_state = resumed["optimizer"] if resumed else None
                self._forecaster.stage_start(self.position.stage)
                started = time.perf_counter()
                finished = self._run_stage(stage, optimizer_state)
                self.forecast.finish(stage.name, time.perf_counter() - started)
                resumed = None
                if not finished:  # max_steps reached
                    results["stopped_at"] = self.position.as_dict()
                    break
                results[stage.name] = self.last_test_top1
            self.position = Position(
                stage=self.position.stage + 1, global_step=self.position.global_step
            )
        return results

    def _run_stage(self, stage: StageConfig, optimizer_state: dict | None) -> bool:
        """Train ``stage`` from the current position: True at its end (test-split top-1,
        checkpoint after every epoch; its weights saved), False where ``max_steps``
        stopped it."""
        pos = self.position
        plan = StagePlan.of(stage, self.net.space, self._peak_lr(stage), len(self._batch_sampler))
        if pos.stage_step == 0 and pos.batch == 0 and pos.epoch == 0 and stage.sort_channels:
            self.net.sort_channels()
        self.teacher = self._load_teacher() if stage.distill and self.config.kd_ratio > 0 else None
        optimizer = self._optimizer(stage, optimizer_state)
        epochs = self._epoch_runner(optimizer)
        self.reporter.stage_start(stage.name, pos, plan)
        while pos.epoch < plan.num_epochs:
            loader = self._train_loader(pos.epoch, pos.batch)
            with self.reporter.epoch(stage.name, pos, plan) as progress:

                def on_step(pos: Position, step: StepResult, stats: EpochStats) -> None:
                    progress.step(pos, step, stats)
                    self._forecaster.step(
                        pos.stage, pos.stage_step, pos.epoch, stats.steps, stats.elapsed
                    )

                stats = epochs.run(plan, pos, loader, on_step=on_step)
            if stats.stopped:  # max_steps reached; the runner has checkpointed
                return False
            self._end_epoch(stage.name, plan, stats, optimizer)
        self.checkpoints.save_stage_weights(stage)
        return True

    def _end_epoch(
        self, stage: str, plan: StagePlan, stats: EpochStats, optimizer: torch.optim.Optimizer
    ) -> None:
        """After an epoch: move to the next, check that the workers agree, measure the
        test-split top-1, report, checkpoint."""
        pos = self.position
        ended = pos.epoch
        pos.epoch += 1
        pos.batch = 0
        archs = digest(*stats.archs)
        consistency = check_consistent(self.env, params=digest(self.net), archs=archs)
        started = time.perf_counter()
        self.last_test_top1 = self.evaluate_on_test_split(plan.space)
        validation_s = time.perf_counter() - started
        self.reporter.epoch_end(stage, stats, consistency, self.last_test_top1)
        self.checkpoints.save(optimizer, pos)
        goes_on = pos.epoch < plan.num_epochs
        self._forecaster.epoch_end(
            pos.stage, ended, pos.stage_step, stats.steps, stats.elapsed, validation_s, goes_on
        )

    def _make_forecaster(self, wanted: list[str]) -> TrainingForecaster:
        """The forecast of this session's stages (and ``ofa run``'s later steps); only
        the process that reports measures and tells it."""
        work = None
        if self.env.is_main:
            steps_per_epoch, test_images = len(self._batch_sampler), len(self.test_set)
            work = TrainingWork(
                self.net, self.config, steps_per_epoch, test_images, self.test_split_archs
            )
            if self._forecast_later is not None:
                # Probes build networks: keep the run's random stream as it was.
                with torch.random.fork_rng(devices=[]):
                    self.forecast.later = self._forecast_later(self.net, test_images)
        return TrainingForecaster(
            self.forecast, work, wanted, self.reporter.forecast, self.forecast_window
        )

    # ---------------------------------------------------- top-1 on the test split
    def test_split_archs(self, space: MBConvSpace) -> dict[str, Arch]:
        """The sub-networks measured on the test split after every epoch: smallest,
        largest and a fixed set of random ones of the open space."""
        archs = {"smallest": space.smallest(), "largest": space.largest()}
        rng = random.Random(f"ofa-val-{self.config.seed}")
        for i in range(self.config.num_random_val_archs):
            archs[f"random{i}"] = space.sample(rng)
        return archs

    def evaluate_on_test_split(self, space: MBConvSpace) -> dict[str, float]:
        """Top-1 on the test split of each of :meth:`test_split_archs` at each evaluation
        resolution, after BN recalibration on held-out training images (rank 0 only; {}
        on the other workers)."""
        if not self.env.is_main:
            return {}
        archs = self.test_split_archs(space)
        return self.evaluator.run(self.net, archs, self.config.eval_resolutions)


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
