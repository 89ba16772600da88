"""The schedule of a progressive-shrinking run: where it is (:class:`Position`), which
sub-networks a step trains, and the learning rate at each step.

Everything here is a pure function of the config and the position, which is what makes
distributed workers agree and resumed runs exact.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, Union

from ..arch import MBConvSpace, ResNetArch, ResNetSpace
from ..errors import ConfigError
from .config import StageConfig

AnySpace = Union[MBConvSpace, ResNetSpace]

__all__ = [
    "OpenResNetSpace",
    "Position",
    "SkipBatches",
    "lr_at",
    "peak_lr",
    "sample_stage_arch",
    "stage_space",
    "step_archs",
]


def _opened(stage: StageConfig, name: str, available: Sequence[Any]) -> tuple:
    """The values of ``name`` that ``stage`` opens (the largest if it names none), all of
    which the supernet must have."""
    opened = getattr(stage, name)
    if opened is None:
        return (max(available),)
    outside = [v for v in opened if v not in available]
    if outside:
        raise ConfigError(
            f"stage {stage.name!r} opens {name} {outside} that the supernet does not have; "
            f"it has {list(available)}"
        )
    return tuple(opened)


def stage_space(space: AnySpace, stage: StageConfig) -> AnySpace | OpenResNetSpace:
    """The part of ``space`` that ``stage`` has opened; its samples are archs of ``space``."""
    if isinstance(space, ResNetSpace):
        if stage.kernel_sizes:
            raise ConfigError(f"stage {stage.name!r}: OFA-ResNet has no elastic kernel size")
        opened = dataclasses.replace(
            space,
            expand_ratios=_opened(stage, "expand_ratios", space.expand_ratios),
            depths=_opened(stage, "depths", space.depths),
            width_mults=_opened(stage, "width_mults", space.width_mults),
        )
        return OpenResNetSpace(space, opened)
    if stage.width_mults:
        raise ConfigError(f"stage {stage.name!r}: width_mults apply to OFA-ResNet supernets only")
    return MBConvSpace(
        kernel_sizes=_opened(stage, "kernel_sizes", space.kernel_sizes),
        expand_ratios=_opened(stage, "expand_ratios", space.expand_ratios),
        depths=_opened(stage, "depths", space.depths),
        stage_max_depths=space.stage_max_depths,
        resolutions=space.resolutions,
    )


@dataclass(frozen=True)
class OpenResNetSpace:
    """The choices a stage has opened (``opened``) of an OFA-ResNet space (``full``).
    Samples are written as archs of ``full``: their ``w`` indexes ``full.width_mults``
    and their ``d[0]`` runs or skips the stem block as in ``full``."""

    full: ResNetSpace
    opened: ResNetSpace

    @property
    def resolutions(self) -> tuple[int, ...]:
        return self.full.resolutions

    def _lift(self, arch: ResNetArch) -> ResNetArch:
        widths = self.opened.width_mults
        stem = max(self.full.depths) if self.opened.stem_block_runs(arch) else min(self.full.depths)
        return ResNetArch(
            d=(stem, *arch.d[1:]),
            e=arch.e,
            w=tuple(self.full.width_mults.index(widths[i]) for i in arch.w),
            r=arch.r,
        )

    def sample(self, rng: random.Random | int | None = None) -> ResNetArch:
        return self._lift(self.opened.sample(rng))

    def largest(self, resolution: int | None = None) -> ResNetArch:
        return self._lift(self.opened.largest(resolution))

    def smallest(self, resolution: int | None = None) -> ResNetArch:
        return self._lift(self.opened.smallest(resolution))


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
    return archs
