"""The part of an OFA-ResNet space a training stage opens (``ResNetSpace.restrict``)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .resnet import ResNetArch, ResNetSpace

__all__ = ["OpenResNetSpace"]


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
        return self.full.arch_type(
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
