"""The schedule of a progressive-shrinking run: where it is (:class:`Position`), which
sub-networks a step trains, and the learning rate at each step.

Everything here is a pure function of the config and the position, which is what makes
distributed workers agree and resumed runs exact.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Any, Iterator

from ..arch import Space
from ..errors import ConfigError
from .config import StageConfig

__all__ = [
    "Position",
    "SkipBatches",
    "lr_at",
    "peak_lr",
    "sample_stage_arch",
    "stage_space",
    "step_archs",
]


ELASTIC_FIELDS = ("kernel_sizes", "expand_ratios", "depths", "width_mults")  # of StageConfig


def stage_space(space: Space, stage: StageConfig) -> Any:
    """The part of ``space`` that ``stage`` has opened (``space.restrict``); its samples
    are archs of ``space``. A choice set the stage leaves out opens only the space's
    largest; one the stage names must be the space's own."""
    for name in ELASTIC_FIELDS:
        if getattr(stage, name) and name not in space.elastic_dimensions:
            raise ConfigError(
                f"stage {stage.name!r} opens {name}, which this supernet does not have; "
                f"its elastic choices are {', '.join(space.elastic_dimensions)}"
            )
    opened = {}
    for name in space.elastic_dimensions:
        values = getattr(stage, name)
        available = getattr(space, name)
        if values is None:
            opened[name] = (max(available),)
            continue
        outside = [v for v in values if v not in available]
        if outside:
            raise ConfigError(
                f"stage {stage.name!r} opens {name} {outside} that the supernet does not "
                f"have; it has {list(available)}"
            )
        opened[name] = tuple(values)
    return space.restrict(**opened)


def sample_stage_arch(space: Any, seed: int, stage: int, step: int, k: int) -> Any:
    """The ``k``-th sub-network of a step: a pure function of its position in the run, so
    every worker samples the same one and a resumed run samples what it would have."""
    # A string seed hashes deterministically (unlike hash()), identically on every worker.
    return space.sample(random.Random(f"ofa-{seed}-{stage}-{step}-{k}"))


class SkipBatches:
    """A batch sampler that starts ``skip`` batches into its inner sampler (resume)."""

    def __init__(self, inner: Any, skip: int) -> None:
        self.inner, self.skip = inner, skip

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)


@dataclass
class Position:
    stage: int = 0
    epoch: int = 0
    batch: int = 0  # next batch within the epoch
    stage_step: int = 0  # optimiser steps taken in this stage
    global_step: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))

    def record(self, stage_name: str) -> dict[str, Any]:
        """The position as logged: the stage by name, its index as ``stage_index``."""
        return {**self.as_dict(), "stage_index": self.stage, "stage": stage_name}


def peak_lr(stage: StageConfig, global_batch: int) -> float:
    """The stage's learning rate (given per 64 images) scaled to the global batch."""
    return stage.lr * global_batch / 64


def lr_at(peak: float, stage: StageConfig, step: int, steps_per_epoch: int, total: int) -> float:
    """Linear warm-up over ``stage.warmup_epochs``, then cosine decay to 0 at ``total``."""
    warmup = int(stage.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1 + math.cos(math.pi * min(1.0, progress)))


def step_archs(space: Any, stage: StageConfig, seed: int, stage_index: int, step: int):
    """The sub-networks one optimiser step of ``stage`` trains, in order."""
    archs = [
        sample_stage_arch(space, seed, stage_index, step, k) for k in range(stage.subnets_per_step)
    ]
    if stage.train_largest:
        archs[0] = space.largest()
    if stage.train_smallest:
        archs[-1] = space.smallest()
    return archs
