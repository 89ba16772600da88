"""Architectures of the OFA-ResNet50 family (ResNet-50D with elastic depth, expand ratio
and width), in the authors' own dict format so that their arch dicts load unchanged::

    {"d": [5 ints], "e": [18 floats], "w": [6 ints], "r": [resolution]}

- ``d[0]`` says whether the deep stem's residual 3x3 block runs: the largest depth
  choice (2) runs it, the smallest (0) skips it. ``d[1:]`` are the extra blocks of the
  four stages on top of their base depths 2, 2, 4, 2 (the first ``base + d`` blocks run).
- ``e`` holds one bottleneck expand ratio per block slot, slots numbered stage by stage
  (``base + max(depths)`` slots per stage); entries of slots that depth skips are carried
  but ignored, whatever their value.
- ``w`` holds width-multiplier *indices*: the stem's first two convs, the stem's last
  conv, then one per stage.

The resolution may also be given as ``"image_size"`` (the key of the authors' arch
encoder), or left out (their network-level sampler writes none): it then defaults to the
space's largest resolution. ``d``, ``e`` and ``w`` may be given as a single value for
every position, as the authors' ``set_active_subnet`` accepts.

:class:`ResNetArch` is the validated, hashable value; :class:`ResNetSpace` validates,
samples, counts and one-hot encodes them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence, Union

import numpy as np

from ..storage.reading import loads_json
from .base import ArchError, choices_text, describe_resolutions, is_int
from .resnet_genes import ResNetGenome, resnet_genome
from .resnet_open import OpenResNetSpace

__all__ = ["OpenResNetSpace", "ResNetArch", "ResNetArchLike", "ResNetSpace"]

_KEYS = ("d", "e", "w", "r")
_RESOLUTION_KEYS = ("r", "image_size")


@dataclass(frozen=True)
class ResNetArch:
    """One OFA-ResNet50 sub-network: depths (stem block, then per stage), expand ratio
    per block slot, width-multiplier index per width position, input resolution.
    Immutable and hashable."""

    d: tuple[int, ...]
    e: tuple[float, ...]
    w: tuple[int, ...]
    r: int

    def to_dict(self) -> dict[str, list]:
        """The authors' format: lists, resolution wrapped in a one-element list."""
        return {"d": list(self.d), "e": list(self.e), "w": list(self.w), "r": [self.r]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def __str__(self) -> str:
        return f"d={list(self.d)} e={list(self.e)} w={list(self.w)} r={self.r}"


ResNetArchLike = Union[ResNetArch, Mapping[str, Any], str]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ResNetSpace:
    """The space of an OFA-ResNet supernet.

    ``base_depths`` are the blocks every stage always runs; ``depths`` the extra blocks a
    stage may add (each stage has ``base + max(depths)`` slots). ``width_mults`` are the
    multipliers that ``w`` indexes; ``expand_ratios`` the bottleneck ratios (hidden width
    ``make_divisible(round(out * e), 8)``).
    """

    arch_type: ClassVar[type] = ResNetArch
    elastic_dimensions: ClassVar[tuple[str, ...]] = ("expand_ratios", "depths", "width_mults")
    encoding_type: ClassVar[str] = "resnet-onehot"

    expand_ratios: tuple[float, ...] = (0.2, 0.25, 0.35)
    depths: tuple[int, ...] = (0, 1, 2)
    width_mults: tuple[float, ...] = (0.65, 0.8, 1.0)
    base_depths: tuple[int, ...] = (2, 2, 4, 2)
    resolutions: tuple[int, ...] = tuple(range(128, 225, 4))

    def __post_init__(self) -> None:
        normalise = {
            "expand_ratios": float,
            "depths": int,
            "width_mults": float,
            "resolutions": int,
        }
        for name, kind in normalise.items():
            values = tuple(sorted(set(kind(v) for v in getattr(self, name))))
            if not values:
                raise ValueError(f"{name} must not be empty")
            object.__setattr__(self, name, values)
        object.__setattr__(self, "base_depths", tuple(int(b) for b in self.base_depths))
        if not self.base_depths:
            raise ValueError("a ResNet space needs at least one stage")
        if min(self.depths) < 0:
            raise ValueError(f"depths are extra blocks and cannot be negative: {self.depths}")
        if min(self.base_depths) + min(self.depths) < 1:
            raise ValueError("every stage must run at least one block")
        if min(self.expand_ratios) <= 0 or min(self.width_mults) <= 0:
            raise ValueError("expand ratios and width multipliers must be positive")

    # ----------------------------------------------------------------- structure
    @property
    def num_stages(self) -> int:
        return len(self.base_depths)

    @property
    def num_slots(self) -> int:
        """Bottleneck block slots (18 for ResNet-50D with depths 0..2)."""
        return sum(self.stage_max_depths)

    @property
    def num_widths(self) -> int:
        """Width positions: the stem's first convs, the stem's last conv, each stage."""
        return self.num_stages + 2

    @property
    def stage_max_depths(self) -> tuple[int, ...]:
        return tuple(b + max(self.depths) for b in self.base_depths)

    @property
    def stem_depth_choices(self) -> tuple[int, ...]:
        """Values of ``d[0]``: the smallest depth skips the stem block, the largest runs it."""
        return tuple(sorted({min(self.depths), max(self.depths)}))

    def stage_slots(self, stage: int) -> range:
        start = sum(self.stage_max_depths[:stage])
        return range(start, start + self.stage_max_depths[stage])

    def stage_depth(self, arch: ResNetArch, stage: int) -> int:
        """Blocks that stage ``stage`` runs under ``arch``."""
        return self.base_depths[stage] + arch.d[stage + 1]

    def stem_block_runs(self, arch: ResNetArch) -> bool:
        return arch.d[0] == max(self.depths)

    def active_slots(self, arch: ResNetArch) -> list[int]:
        """Block slots that run under ``arch`` (the first ``base + d`` of every stage)."""
        return [
            slot
            for stage in range(self.num_stages)
            for slot in self.stage_slots(stage)[: self.stage_depth(arch, stage)]
        ]

    # ---------------------------------------------------------------- validation
    def parse(self, arch: ResNetArchLike) -> ResNetArch:
        """Validate ``arch`` (a :class:`ResNetArch`, an authors'-format dict or its JSON
        text) and return it as a :class:`ResNetArch`. Raises :class:`ArchError` naming
        the field, the index, the bad value and the allowed values. A value this space
        has validated before is not validated again."""
        if isinstance(arch, ResNetArch):
            return _parse_value(self, arch)
        return self._parse(arch)

    def _parse(self, arch: ResNetArchLike) -> ResNetArch:
        if isinstance(arch, str):
            try:
                arch = loads_json(arch)
            except json.JSONDecodeError as exc:
                raise ArchError(f"arch is not valid JSON: {exc}") from None
        if isinstance(arch, ResNetArch):
            arch = {"d": arch.d, "e": arch.e, "w": arch.w, "r": arch.r}
        if not isinstance(arch, Mapping):
            raise ArchError(
                f"arch must be a dict with keys {', '.join(_KEYS)}; got {type(arch).__name__}"
            )
        unknown = sorted(set(arch) - {"d", "e", "w", *_RESOLUTION_KEYS}, key=str)
        if unknown:
            raise ArchError(
                f"arch has unknown key(s) {', '.join(repr(k) for k in unknown)} "
                f"(expected keys: {', '.join(_KEYS)}; 'image_size' is read as 'r')"
            )
        missing = [k for k in ("d", "e", "w") if k not in arch]
        if missing:
            raise ArchError(
                f"arch is missing key(s) {', '.join(repr(k) for k in missing)} "
                f"(expected keys: {', '.join(_KEYS)})"
            )

        depth_choices = sorted(set(self.depths) | set(self.stem_depth_choices))
        d = self._int_list(
            arch["d"], "d", self.num_stages + 1, "stem block, then one per stage", depth_choices
        )
        if d[0] not in self.stem_depth_choices:
            raise ArchError(
                f"d[0] = {d[0]} is not allowed: d[0] says whether the stem's residual block "
                f"runs ({max(self.depths)}) or is skipped ({min(self.depths)}); "
                f"allowed: {choices_text(self.stem_depth_choices)}"
            )
        for stage in range(self.num_stages):
            if d[stage + 1] not in self.depths:
                raise ArchError(
                    f"d[{stage + 1}] = {d[stage + 1]} is not an allowed depth (extra blocks of "
                    f"stage {stage}); allowed: {choices_text(self.depths)}"
                )

        w_choices = list(range(len(self.width_mults)))
        w = self._int_list(
            arch["w"],
            "w",
            self.num_widths,
            "width-multiplier indices: stem, stem, stages",
            w_choices,
        )
        for i, value in enumerate(w):
            if value not in w_choices:
                raise ArchError(
                    f"w[{i}] = {value} is not an allowed width index; allowed: "
                    f"{choices_text(w_choices)} (indices into width multipliers "
                    f"{choices_text(self.width_mults)})"
                )

        e = self._number_list(arch["e"], "e", self.num_slots, "one per block slot")
        probe = ResNetArch(d=d, e=e, w=w, r=0)
        active = set(self.active_slots(probe))
        ratios = []
        for slot, value in enumerate(e):
            if slot not in active:
                ratios.append(value)
                continue
            match = [c for c in self.expand_ratios if math.isclose(value, c, rel_tol=1e-9)]
            if not match:
                raise ArchError(
                    f"e[{slot}] = {value!r} is not an allowed expand ratio; "
                    f"allowed: {choices_text(self.expand_ratios)}"
                )
            ratios.append(match[0])

        return ResNetArch(d=d, e=tuple(ratios), w=w, r=self._resolution(arch))

    def _resolution(self, arch: Mapping[str, Any]) -> int:
        given = {k: arch[k] for k in _RESOLUTION_KEYS if k in arch}
        if not given:
            return max(self.resolutions)
        values = []
        for key, r in given.items():
            if isinstance(r, (list, tuple)):
                if len(r) != 1:
                    raise ArchError(f"{key} must hold exactly one resolution, got {list(r)}")
                r = r[0]
            allowed = describe_resolutions(self.resolutions)
            if not is_int(r):
                raise ArchError(f"{key} = {r!r} must be an int; allowed: {allowed}")
            if int(r) not in self.resolutions:
                raise ArchError(f"{key} = {r} is not an allowed resolution; allowed: {allowed}")
            values.append(int(r))
        if len(set(values)) > 1:
            raise ArchError(f"r = {values[0]} and image_size = {values[1]} disagree")
        return values[0]

    @staticmethod
    def _broadcast(values: Any, length: int) -> Any:
        # The authors' set_active_subnet reads a single value as "this for every position".
        if isinstance(values, (list, tuple)):
            return values
        return [values] * length

    def _int_list(
        self, values: Any, field: str, length: int, what: str, allowed: Sequence[int]
    ) -> tuple[int, ...]:
        values = self._broadcast(values, length)
        if len(values) != length:
            raise ArchError(f"{field} has {len(values)} entries; expected {length} ({what})")
        for i, v in enumerate(values):
            if not is_int(v):
                raise ArchError(
                    f"{field}[{i}] = {v!r} must be an int; allowed: {choices_text(allowed)}"
                )
        return tuple(int(v) for v in values)

    def _number_list(self, values: Any, field: str, length: int, what: str) -> tuple[float, ...]:
        values = self._broadcast(values, length)
        if len(values) != length:
            raise ArchError(f"{field} has {len(values)} entries; expected {length} ({what})")
        for i, v in enumerate(values):
            if not _is_number(v):
                allowed = choices_text(self.expand_ratios)
                raise ArchError(f"{field}[{i}] = {v!r} must be a number; allowed: {allowed}")
        return tuple(float(v) for v in values)

    def canonical(self, arch: ResNetArchLike) -> ResNetArch:
        """``arch`` with skipped slots' expand ratios written as 0, so two archs that run
        the same network compare equal."""
        arch = self.parse(arch)
        active = set(self.active_slots(arch))
        e = tuple(x if i in active else 0.0 for i, x in enumerate(arch.e))
        return ResNetArch(d=arch.d, e=e, w=arch.w, r=arch.r)

    def restrict(self, **opened: Sequence[Any]) -> OpenResNetSpace:
        """The part of this space a training stage opens (any of
        :attr:`elastic_dimensions`); its samples are archs of this space."""
        choices = {name: tuple(values) for name, values in opened.items()}
        return OpenResNetSpace(self, dataclasses.replace(self, **choices))

    def summary(self, arch: ResNetArch) -> str:
        """One line: resolution, depths, mean expand ratio of the blocks that run, width
        indices (``r224 d02222 e0.29 w212100``)."""
        active = self.active_slots(arch)
        mean_e = sum(arch.e[s] for s in active) / len(active)
        depths = "".join(str(d) for d in arch.d)
        return f"r{arch.r} d{depths} e{mean_e:.2f} w{''.join(str(w) for w in arch.w)}"

    def genome(self) -> ResNetGenome:
        """This space's gene-matrix layout for search (cached)."""
        return resnet_genome(self)

    # ------------------------------------------------------------------ sampling
    def sample(self, rng: random.Random | int | None = None) -> ResNetArch:
        """A random architecture, each choice independently uniform (as the authors'
        samplers: the stem block runs or not with probability 1/2)."""
        if not isinstance(rng, random.Random):
            rng = random.Random(rng)
        d = (rng.choice(self.stem_depth_choices),) + tuple(
            rng.choice(self.depths) for _ in range(self.num_stages)
        )
        e = tuple(rng.choice(self.expand_ratios) for _ in range(self.num_slots))
        w = tuple(rng.randrange(len(self.width_mults)) for _ in range(self.num_widths))
        return ResNetArch(d=d, e=e, w=w, r=rng.choice(self.resolutions))

    def largest(self, resolution: int | None = None) -> ResNetArch:
        return ResNetArch(
            d=(max(self.depths),) * (self.num_stages + 1),
            e=(max(self.expand_ratios),) * self.num_slots,
            w=(len(self.width_mults) - 1,) * self.num_widths,
            r=max(self.resolutions) if resolution is None else resolution,
        )

    def smallest(self, resolution: int | None = None) -> ResNetArch:
        return ResNetArch(
            d=(min(self.depths),) * (self.num_stages + 1),
            e=(min(self.expand_ratios),) * self.num_slots,
            w=(0,) * self.num_widths,
            r=min(self.resolutions) if resolution is None else resolution,
        )

    def num_subnets(self, with_resolution: bool = True) -> int:
        """How many distinct architectures the space holds (exact integer; archs that
        differ only in skipped slots count once). A few distinct archs have the same
        shapes, e.g. where two width multipliers round to the same channel count."""
        n_e, n_w = len(self.expand_ratios), len(self.width_mults)
        total = len(self.stem_depth_choices) * n_w * n_w
        for base in self.base_depths:
            total *= n_w * sum(n_e ** (base + d) for d in self.depths)
        return total * len(self.resolutions) if with_resolution else total

    # ------------------------------------------------------------------ encoding
    @property
    def encoding_size(self) -> int:
        return (
            len(self.resolutions)
            + len(self.stem_depth_choices)
            + self.num_stages * len(self.depths)
            + self.num_slots * len(self.expand_ratios)
            + self.num_widths * len(self.width_mults)
        )

    def encoding_layout(self) -> dict[str, Any]:
        """What the one-hot features mean; saved with predictors so a predictor can
        refuse an encoding of another space."""
        return {
            "type": self.encoding_type,
            "order": "r, d[0] (stem block), d per stage, e per slot, w per position",
            "resolutions": list(self.resolutions),
            "stem_depths": list(self.stem_depth_choices),
            "depths": list(self.depths),
            "expand_ratios": list(self.expand_ratios),
            "width_mults": list(self.width_mults),
            "base_depths": list(self.base_depths),
        }

    def encode(self, arch: ResNetArchLike) -> np.ndarray:
        """One-hot features (float32): resolution, stem-block choice, depth of every
        stage, expand ratio of every slot (all zeros for skipped slots), width index of
        every position."""
        arch = self.parse(arch)
        feature = np.zeros(self.encoding_size, dtype=np.float32)
        base = 0
        feature[base + self.resolutions.index(arch.r)] = 1.0
        base += len(self.resolutions)
        feature[base + self.stem_depth_choices.index(arch.d[0])] = 1.0
        base += len(self.stem_depth_choices)
        for stage in range(self.num_stages):
            feature[base + self.depths.index(arch.d[stage + 1])] = 1.0
            base += len(self.depths)
        n_e = len(self.expand_ratios)
        for slot in self.active_slots(arch):
            feature[base + slot * n_e + self.expand_ratios.index(arch.e[slot])] = 1.0
        base += self.num_slots * n_e
        for position, index in enumerate(arch.w):
            feature[base + position * len(self.width_mults) + index] = 1.0
        return feature


@functools.lru_cache(maxsize=65536)
def _parse_value(space: ResNetSpace, arch: ResNetArch) -> ResNetArch:
    """``space._parse(arch)``, remembered (see :func:`.mbconv._parse_value`)."""
    return space._parse(arch)
