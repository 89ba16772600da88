"""Architecture values and the spaces they live in.

An architecture is written in the authors' own dict format, so that arch dicts produced by
their code load unchanged::

    {"ks": [20 kernel sizes], "e": [20 expand ratios], "d": [5 stage depths], "r": [resolution]}

Block slots are numbered stage by stage (slot ``stage * max_depth + i``). Entries of slots
that the stage depth skips are carried but ignored, whatever their value. The resolution
may also be given as ``"image_size"`` (an int), as the authors' arch encoder and their
``ofa.nas`` evolutionary search write it.

:class:`MBConvArch` is the validated, hashable value; :class:`MBConvSpace` knows the choices of
one supernet family and validates, samples, counts and one-hot encodes architectures.
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
from .mbconv_genes import GenomeLayout, mbconv_genome

__all__ = ["Arch", "ArchError", "ArchLike", "MBConvArch", "MBConvSpace"]

# Keys that the authors' samplers write and that carry no information for these spaces.
_IGNORED_KEYS = frozenset({"wid"})
_KEYS = ("ks", "e", "d", "r")


@dataclass(frozen=True)
class MBConvArch:
    """One sub-network of an MBConv space: kernel sizes and expand ratios per block slot,
    depth per stage, input resolution. Immutable and hashable (usable as a dict key in
    search)."""

    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]
    r: int

    def to_dict(self) -> dict[str, list[int]]:
        """The authors' format: lists, resolution wrapped in a one-element list."""
        return {"ks": list(self.ks), "e": list(self.e), "d": list(self.d), "r": [self.r]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def __str__(self) -> str:
        return f"ks={list(self.ks)} e={list(self.e)} d={list(self.d)} r={self.r}"


Arch = MBConvArch  # the name of 0.1.0, kept for the authors'-format users of onceforall.Arch
ArchLike = Union[MBConvArch, Mapping[str, Any], str]


@dataclass(frozen=True)
class MBConvSpace:
    """The space of an MBConv supernet (OFA-MobileNetV3, OFA-ProxylessNAS).

    ``stage_max_depths`` gives the number of block slots per stage; the depth of each
    stage is chosen from ``depths`` capped by its slot count, as the authors' code caps
    it. A stage with fewer slots than the smallest depth therefore always runs all of
    them (OFA-ProxylessNAS's last stage: one block, ``d`` written as anything in
    ``depths`` and read as 1).
    """

    arch_type: ClassVar[type] = MBConvArch
    elastic_dimensions: ClassVar[tuple[str, ...]] = ("kernel_sizes", "expand_ratios", "depths")
    encoding_type: ClassVar[str] = "mbconv-onehot"

    kernel_sizes: tuple[int, ...] = (3, 5, 7)
    expand_ratios: tuple[int, ...] = (3, 4, 6)
    depths: tuple[int, ...] = (2, 3, 4)
    stage_max_depths: tuple[int, ...] = (4, 4, 4, 4, 4)
    resolutions: tuple[int, ...] = tuple(range(128, 225, 4))

    def __post_init__(self) -> None:
        for name in ("kernel_sizes", "expand_ratios", "depths", "resolutions"):
            values = tuple(sorted(set(int(v) for v in getattr(self, name))))
            if not values:
                raise ValueError(f"{name} must not be empty")
            object.__setattr__(self, name, values)
        if any(k % 2 == 0 or k < 1 for k in self.kernel_sizes):
            raise ValueError(f"kernel sizes must be odd and positive, got {self.kernel_sizes}")
        if not self.stage_max_depths or min(self.stage_max_depths) < 1:
            raise ValueError(f"every stage needs at least one block slot: {self.stage_max_depths}")

    # ----------------------------------------------------------------- structure
    @property
    def num_stages(self) -> int:
        return len(self.stage_max_depths)

    @property
    def num_slots(self) -> int:
        return sum(self.stage_max_depths)

    def stage_slots(self, stage: int) -> range:
        """Indices of the block slots of one stage."""
        start = sum(self.stage_max_depths[:stage])
        return range(start, start + self.stage_max_depths[stage])

    def active_slots(self, arch: MBConvArch) -> list[int]:
        """Block slots that run under ``arch`` (the first d of every stage)."""
        return [
            slot for stage, depth in enumerate(arch.d) for slot in self.stage_slots(stage)[:depth]
        ]

    # ---------------------------------------------------------------- validation
    def parse(self, arch: ArchLike) -> MBConvArch:
        """Validate ``arch`` (an :class:`MBConvArch`, an authors'-format dict or its JSON
        text) and return it as an :class:`MBConvArch`. Raises :class:`ArchError` naming
        the field, the index, the bad value and the allowed values. A value this space
        has validated before is not validated again (parse once, trust after)."""
        if isinstance(arch, MBConvArch):
            return _parse_value(self, arch)
        return self._parse(arch)

    def _parse(self, arch: ArchLike) -> MBConvArch:
        if isinstance(arch, str):
            try:
                arch = loads_json(arch)
            except json.JSONDecodeError as exc:
                raise ArchError(f"arch is not valid JSON: {exc}") from None
        if isinstance(arch, MBConvArch):
            arch = {"ks": arch.ks, "e": arch.e, "d": arch.d, "r": arch.r}
        if not isinstance(arch, Mapping):
            raise ArchError(
                f"arch must be a dict with keys {', '.join(_KEYS)}; got {type(arch).__name__}"
            )
        if "image_size" in arch:  # the key of their arch encoder and ofa.nas search
            if "r" in arch:
                raise ArchError("arch gives both 'r' and 'image_size'; give one resolution")
            arch = {**{k: v for k, v in arch.items() if k != "image_size"}, "r": arch["image_size"]}
        missing = [k for k in _KEYS if k not in arch]
        if missing:
            raise ArchError(
                f"arch is missing key(s) {', '.join(repr(k) for k in missing)} "
                f"(expected keys: {', '.join(_KEYS)})"
            )
        unknown = sorted(set(arch) - set(_KEYS) - _IGNORED_KEYS, key=str)
        if unknown:
            raise ArchError(
                f"arch has unknown key(s) {', '.join(repr(k) for k in unknown)} "
                f"(expected keys: {', '.join(_KEYS)})"
            )

        d = self._int_list(arch["d"], "d", self.num_stages, "one per stage", self.depths)
        for stage, depth in enumerate(d):
            allowed = self.stage_depth_choices(stage)
            if depth not in allowed and not (
                depth in self.depths and depth > self.stage_max_depths[stage]
            ):
                raise ArchError(
                    f"d[{stage}] = {depth} is not an allowed depth; "
                    f"allowed: {choices_text(allowed)}"
                )
        d = tuple(min(depth, cap) for depth, cap in zip(d, self.stage_max_depths))
        ks = self._int_list(
            arch["ks"], "ks", self.num_slots, "one per block slot", self.kernel_sizes
        )
        e = self._int_list(arch["e"], "e", self.num_slots, "one per block slot", self.expand_ratios)
        probe = MBConvArch(ks=ks, e=e, d=d, r=0)
        for slot in self.active_slots(probe):
            if ks[slot] not in self.kernel_sizes:
                raise ArchError(
                    f"ks[{slot}] = {ks[slot]} is not an allowed kernel size; "
                    f"allowed: {choices_text(self.kernel_sizes)}"
                )
            if e[slot] not in self.expand_ratios:
                raise ArchError(
                    f"e[{slot}] = {e[slot]} is not an allowed expand ratio; "
                    f"allowed: {choices_text(self.expand_ratios)}"
                )

        r = arch["r"]
        if isinstance(r, (list, tuple)):
            if len(r) != 1:
                raise ArchError(f"r must hold exactly one resolution, got {list(r)}")
            r = r[0]
        allowed = describe_resolutions(self.resolutions)
        if not is_int(r):
            raise ArchError(f"r = {r!r} must be an int; allowed: {allowed}")
        if int(r) not in self.resolutions:
            raise ArchError(f"r = {r} is not an allowed resolution; allowed: {allowed}")
        return MBConvArch(ks=ks, e=e, d=d, r=int(r))

    @staticmethod
    def _int_list(
        values: Any, field: str, length: int, what: str, allowed: Sequence[int]
    ) -> tuple[int, ...]:
        if not isinstance(values, (list, tuple)):
            raise ArchError(f"{field} must be a list of {length} ints ({what}); got {values!r}")
        if len(values) != length:
            raise ArchError(f"{field} has {len(values)} entries; expected {length} ({what})")
        for i, v in enumerate(values):
            if not is_int(v):
                raise ArchError(
                    f"{field}[{i}] = {v!r} must be an int; allowed: {choices_text(allowed)}"
                )
        return tuple(int(v) for v in values)

    def canonical(self, arch: ArchLike) -> MBConvArch:
        """``arch`` with skipped slots written as 0 (as the authors' encoder does), so two
        archs that run the same network compare equal."""
        arch = self.parse(arch)
        active = set(self.active_slots(arch))
        ks = tuple(k if i in active else 0 for i, k in enumerate(arch.ks))
        e = tuple(x if i in active else 0 for i, x in enumerate(arch.e))
        return MBConvArch(ks=ks, e=e, d=arch.d, r=arch.r)

    def restrict(self, **opened: Sequence[int]) -> MBConvSpace:
        """The part of this space a training stage opens: the given choice sets (any of
        :attr:`elastic_dimensions`) in place of the full ones; same slots, resolutions."""
        return dataclasses.replace(self, **{k: tuple(v) for k, v in opened.items()})

    def summary(self, arch: MBConvArch) -> str:
        """One line: resolution, stage depths, mean kernel size and mean expand ratio of
        the blocks that run (``r28 d44422 k5.4 e4.3``)."""
        active = self.active_slots(arch)
        mean_k = sum(arch.ks[s] for s in active) / len(active)
        mean_e = sum(arch.e[s] for s in active) / len(active)
        return f"r{arch.r} d{''.join(str(d) for d in arch.d)} k{mean_k:.1f} e{mean_e:.1f}"

    def genome(self) -> GenomeLayout:
        """This space's gene-matrix layout for search (cached)."""
        return mbconv_genome(self)

    # ------------------------------------------------------------------ sampling
    def stage_depth_choices(self, stage: int) -> tuple[int, ...]:
        """The depths stage ``stage`` can run: ``depths`` capped by its slot count."""
        cap = self.stage_max_depths[stage]
        return tuple(sorted({min(x, cap) for x in self.depths}))

    def sample(self, rng: random.Random | int | None = None) -> MBConvArch:
        """A uniformly random architecture (each choice independently uniform)."""
        if not isinstance(rng, random.Random):
            rng = random.Random(rng)
        ks = tuple(rng.choice(self.kernel_sizes) for _ in range(self.num_slots))
        e = tuple(rng.choice(self.expand_ratios) for _ in range(self.num_slots))
        d = tuple(rng.choice(self.stage_depth_choices(s)) for s in range(self.num_stages))
        return MBConvArch(ks=ks, e=e, d=d, r=rng.choice(self.resolutions))

    def largest(self, resolution: int | None = None) -> MBConvArch:
        n = self.num_slots
        return MBConvArch(
            ks=(max(self.kernel_sizes),) * n,
            e=(max(self.expand_ratios),) * n,
            d=tuple(max(self.stage_depth_choices(s)) for s in range(self.num_stages)),
            r=max(self.resolutions) if resolution is None else resolution,
        )

    def smallest(self, resolution: int | None = None) -> MBConvArch:
        n = self.num_slots
        return MBConvArch(
            ks=(min(self.kernel_sizes),) * n,
            e=(min(self.expand_ratios),) * n,
            d=tuple(min(self.stage_depth_choices(s)) for s in range(self.num_stages)),
            r=min(self.resolutions) if resolution is None else resolution,
        )

    def num_subnets(self, with_resolution: bool = True) -> int:
        """How many distinct sub-networks the space holds (exact integer)."""
        per_block = len(self.kernel_sizes) * len(self.expand_ratios)
        total = math.prod(
            sum(per_block**depth for depth in self.stage_depth_choices(s))
            for s in range(self.num_stages)
        )
        return total * len(self.resolutions) if with_resolution else total

    # ------------------------------------------------------------------ encoding
    @property
    def encoding_size(self) -> int:
        return len(self.resolutions) + self.num_slots * (
            len(self.kernel_sizes) + len(self.expand_ratios)
        )

    def encoding_layout(self) -> dict[str, Any]:
        """What the one-hot features mean; saved with predictors so a predictor can
        refuse an encoding of another space."""
        return {
            "type": self.encoding_type,
            "order": "r, ks per slot, e per slot",
            "resolutions": list(self.resolutions),
            "kernel_sizes": list(self.kernel_sizes),
            "expand_ratios": list(self.expand_ratios),
            "stage_max_depths": list(self.stage_max_depths),
        }

    def encode(self, arch: ArchLike) -> np.ndarray:
        """One-hot features (float32): resolution, then kernel size of every slot, then
        expand ratio of every slot; all zeros for slots the depth skips."""
        arch = self.parse(arch)
        n_k, n_e = len(self.kernel_sizes), len(self.expand_ratios)
        feature = np.zeros(self.encoding_size, dtype=np.float32)
        feature[self.resolutions.index(arch.r)] = 1.0
        k_base = len(self.resolutions)
        e_base = k_base + self.num_slots * n_k
        for slot in self.active_slots(arch):
            feature[k_base + slot * n_k + self.kernel_sizes.index(arch.ks[slot])] = 1.0
            feature[e_base + slot * n_e + self.expand_ratios.index(arch.e[slot])] = 1.0
        return feature


@functools.lru_cache(maxsize=65536)
def _parse_value(space: MBConvSpace, arch: MBConvArch) -> MBConvArch:
    """``space._parse(arch)``, remembered: extract, the sub-network, MACs and params all
    receive the same parsed value, which is validated once."""
    return space._parse(arch)
