"""The OFA-ResNet50 family (SPEC section 1): ResNet-50D with elastic depth, bottleneck
expand ratio and width multiplier.

A network is a table: the deep stem (3x3/2 conv to ``stem_width / 2`` channels, a
residual 3x3 block that depth can skip, 3x3 conv to ``stem_width``), a 3x3/2 max pool,
one row per stage (output width, stride, base depth), global average pool, dropout,
linear. Every width is ``make_divisible(width * m, 8)`` for the multiplier ``m`` that the
arch's ``w`` indexes at that position (the stem's first convs take half the stem width,
computed as the authors do). :func:`bottleneck_plan` reads the table once; the elastic
supernet, the static sub-network and the cost model are all built from it.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from ..arch import ResNetArch, ResNetSpace
from ..nn.elastic_resnet import (
    ElasticBottleneck,
    ElasticDeepStem,
    ElasticLinear,
    bottleneck_mid_channels,
)
from ..nn.layers import Bottleneck, DeepStem, make_divisible
from .base import Supernet
from .costs import CostParts, LayerCost, conv_output_size

__all__ = [
    "ResNetStageSpec",
    "RESNET50_STAGES",
    "ResNetConfig",
    "BottleneckPlan",
    "bottleneck_plan",
    "ResNetSubnet",
    "OFAResNet",
]


@dataclass(frozen=True)
class ResNetStageSpec:
    """One stage: output width (before the width multiplier), stride of its first block,
    blocks it always runs (the arch's ``d`` adds up to ``max(depths)`` more)."""

    width: int
    stride: int
    base_depth: int


RESNET50_STAGES: tuple[ResNetStageSpec, ...] = (
    ResNetStageSpec(256, 1, 2),
    ResNetStageSpec(512, 2, 2),
    ResNetStageSpec(1024, 2, 4),
    ResNetStageSpec(2048, 2, 2),
)


@dataclass(frozen=True)
class ResNetConfig:
    """Everything that fixes the shape of an OFA-ResNet supernet; the defaults are the
    authors' OFA-ResNet50 (``ofa_resnet50``)."""

    num_classes: int = 1000
    stem_width: int = 64
    stages: tuple[ResNetStageSpec, ...] = RESNET50_STAGES
    width_mults: tuple[float, ...] = (0.65, 0.8, 1.0)
    expand_ratios: tuple[float, ...] = (0.2, 0.25, 0.35)
    depths: tuple[int, ...] = (0, 1, 2)
    resolutions: tuple[int, ...] = field(default_factory=lambda: tuple(range(128, 225, 4)))
    dropout: float = 0.1
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        for name, kind in (
            ("width_mults", float),
            ("expand_ratios", float),
            ("depths", int),
            ("resolutions", int),
        ):
            object.__setattr__(self, name, tuple(sorted(set(kind(v) for v in getattr(self, name)))))

    @functools.cached_property
    def space(self) -> ResNetSpace:
        """The arch space of this config (built once per config)."""
        return ResNetSpace(
            expand_ratios=self.expand_ratios,
            depths=self.depths,
            width_mults=self.width_mults,
            base_depths=tuple(s.base_depth for s in self.stages),
            resolutions=self.resolutions,
        )

    # Channel counts per width-multiplier index.
    def width_choices(self, base: int) -> tuple[int, ...]:
        return tuple(make_divisible(base * m) for m in self.width_mults)

    @property
    def stem_out_choices(self) -> tuple[int, ...]:
        return self.width_choices(self.stem_width)

    @property
    def stem_mid_choices(self) -> tuple[int, ...]:
        # Half of the (rounded) stem width, rounded again: the authors' formula.
        return tuple(make_divisible(c // 2) for c in self.stem_out_choices)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = [asdict(s) for s in self.stages]
        for key in ("width_mults", "expand_ratios", "depths", "resolutions"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResNetConfig:
        data = dict(data)
        data["stages"] = tuple(ResNetStageSpec(**s) for s in data["stages"])
        for key in ("width_mults", "expand_ratios", "depths", "resolutions"):
            data[key] = tuple(data[key])
        return cls(**data)


@dataclass(frozen=True)
class BottleneckPlan:
    """One bottleneck block slot with its fixed shape. Channel counts are given per
    width-multiplier index; ``in_position`` / ``out_position`` say which entry of the
    arch's ``w`` selects them."""

    stage: int
    index: int  # position inside the stage
    slot: int  # position in the arch's ``e``
    in_choices: tuple[int, ...]
    out_choices: tuple[int, ...]
    in_position: int
    out_position: int
    stride: int

    @property
    def identity_shortcut(self) -> bool:
        """As the authors decide it, on the supernet's channel choices."""
        return self.stride == 1 and self.in_choices == self.out_choices

    def in_channels(self, arch: ResNetArch) -> int:
        return self.in_choices[arch.w[self.in_position]]

    def out_channels(self, arch: ResNetArch) -> int:
        return self.out_choices[arch.w[self.out_position]]

    def mid_channels(self, arch: ResNetArch) -> int:
        return bottleneck_mid_channels(self.out_channels(arch), arch.e[self.slot])


def bottleneck_plan(config: ResNetConfig) -> Iterator[BottleneckPlan]:
    """Every bottleneck slot of the supernet, stage by stage."""
    max_extra = max(config.depths)
    in_choices, in_position = config.stem_out_choices, 1
    slot = 0
    for s, stage in enumerate(config.stages):
        out_choices = config.width_choices(stage.width)
        for i in range(stage.base_depth + max_extra):
            yield BottleneckPlan(
                stage=s,
                index=i,
                slot=slot,
                in_choices=in_choices,
                out_choices=out_choices,
                in_position=in_position,
                out_position=s + 2,
                stride=stage.stride if i == 0 else 1,
            )
            in_choices, in_position = out_choices, s + 2
            slot += 1


class _ResNetBody(nn.Module):
    """What supernet and sub-network share: the forward pass."""

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        x = self._features(x)
        x = x.mean((2, 3))
        return self.classifier(self.dropout(x))


class ResNetSubnet(_ResNetBody):
    """A static sub-network of an OFA-ResNet supernet: plain Conv2d / BatchNorm2d /
    Linear / AvgPool2d / MaxPool2d. Rebuildable from ``config`` and ``arch`` alone (see
    :meth:`spec`)."""

    def __init__(self, config: ResNetConfig, arch: ResNetArch) -> None:
        super().__init__()
        self.config = config
        space = config.space
        self.arch = space.parse(arch)
        bn = {"bn_eps": config.bn_eps, "bn_momentum": config.bn_momentum}
        self.stem = DeepStem(
            config.stem_mid_choices[self.arch.w[0]],
            config.stem_out_choices[self.arch.w[1]],
            residual=space.stem_block_runs(self.arch),
            **bn,
        )
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        stages: list[list[nn.Module]] = [[] for _ in config.stages]
        last = config.stem_out_choices[self.arch.w[1]]
        for plan in bottleneck_plan(config):
            if plan.index >= space.stage_depth(self.arch, plan.stage):
                continue
            last = plan.out_channels(self.arch)
            stages[plan.stage].append(
                Bottleneck(
                    plan.in_channels(self.arch),
                    plan.mid_channels(self.arch),
                    last,
                    plan.stride,
                    conv_shortcut=not plan.identity_shortcut,
                    **bn,
                )
            )
        self.stages = nn.ModuleList(nn.Sequential(*blocks) for blocks in stages)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(last, config.num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x

    def feature_body(self) -> list[tuple[str, nn.Module]]:
        """The modules before the head, in the order they run (see models.features)."""
        stages = [(f"stage{i}", stage) for i, stage in enumerate(self.stages)]
        return [("stem", self.stem), ("pool", self.pool), *stages]

    def spec(self) -> dict[str, Any]:
        """JSON-serialisable description from which the network can be rebuilt."""
        return {"family": "resnet", "config": self.config.to_dict(), "arch": self.arch.to_dict()}


class OFAResNet(_ResNetBody, Supernet):
    """The elastic OFA-ResNet supernet (ResNet-50D by default).

    >>> net = OFAResNet(ResNetConfig(num_classes=10))
    >>> arch = net.space.sample(0)
    >>> net.set_active(arch); logits = net(torch.randn(2, 3, arch.r, arch.r))
    >>> subnet = net.extract(arch)  # an ordinary nn.Module
    """

    space: ResNetSpace

    def __init__(self, config: ResNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or ResNetConfig()
        self.space = self.config.space
        bn = {"bn_eps": self.config.bn_eps, "bn_momentum": self.config.bn_momentum}
        self.stem = ElasticDeepStem(
            max(self.config.stem_mid_choices), max(self.config.stem_out_choices), **bn
        )
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        stages: list[list[ElasticBottleneck]] = [[] for _ in self.config.stages]
        last = self.config.stem_out_choices
        for plan in bottleneck_plan(self.config):
            stages[plan.stage].append(
                ElasticBottleneck(
                    plan.in_choices,
                    plan.out_choices,
                    plan.stride,
                    self.config.expand_ratios,
                    **bn,
                )
            )
            last = plan.out_choices
        self.stages = nn.ModuleList(nn.ModuleList(blocks) for blocks in stages)
        self.dropout = nn.Dropout(self.config.dropout)
        self.classifier = ElasticLinear(max(last), self.config.num_classes)
        self.active_depths = [len(blocks) for blocks in stages]
        self.set_active(self.space.largest())

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        for blocks, depth in zip(self.stages, self.active_depths):
            for block in blocks[:depth]:
                x = block(x)
        return x

    def blocks(self) -> Iterator[tuple[BottleneckPlan, ElasticBottleneck]]:
        for plan in bottleneck_plan(self.config):
            yield plan, self.stages[plan.stage][plan.index]

    def _activate(self, arch: ResNetArch) -> None:
        config = self.config
        self.stem.set_active(
            config.stem_mid_choices[arch.w[0]],
            config.stem_out_choices[arch.w[1]],
            self.space.stem_block_runs(arch),
        )
        self.active_depths = [self.space.stage_depth(arch, s) for s in range(len(config.stages))]
        for plan, block in self.blocks():
            if plan.index < self.active_depths[plan.stage]:
                block.set_active(plan.out_channels(arch), arch.e[plan.slot])

    def build_subnet(self, arch: ResNetArch) -> ResNetSubnet:
        return ResNetSubnet(self.config, arch)

    def _computed_weights(self, arch: ResNetArch) -> dict[str, torch.Tensor]:
        return {}  # every extracted tensor is a leading slice

    def residual_norms(self) -> list[nn.BatchNorm2d]:
        """Bottlenecks with an identity shortcut (the stem's residual conv is left alone,
        as in the authors' ``zero_last_gamma``)."""
        return [block.conv3.bn for _, block in self.blocks() if block.shortcut is None]

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Sort every bottleneck's hidden channels by importance (the stem has none to
        sort). Sub-networks whose blocks run their full hidden width, i.e. largest expand
        ratio at the largest width of every stage, compute the same function afterwards."""
        for _, block in self.blocks():
            block.sort_channels()

    def layer_costs(self, arch: ResNetArch) -> list[LayerCost]:
        config = self.config
        mid = config.stem_mid_choices[arch.w[0]]
        stem_out = config.stem_out_choices[arch.w[1]]
        size = arch.r
        rows = [LayerCost("conv", 3, mid, 3, 2, in_size=size, bn=True)]
        size = conv_output_size(size, 3, 2)
        if self.space.stem_block_runs(arch):
            rows.append(LayerCost("conv", mid, mid, 3, 1, in_size=size, bn=True))
        rows.append(LayerCost("conv", mid, stem_out, 3, 1, in_size=size, bn=True))
        size = conv_output_size(size, 3, 2)  # max pool 3x3/2, padding 1
        last = stem_out
        for plan in bottleneck_plan(config):
            if plan.index >= self.space.stage_depth(arch, plan.stage):
                continue
            c_in, c_mid = plan.in_channels(arch), plan.mid_channels(arch)
            last = plan.out_channels(arch)
            out_size = conv_output_size(size, 3, plan.stride)
            rows += [
                LayerCost("conv", c_in, c_mid, 1, in_size=size, bn=True),
                LayerCost("conv", c_mid, c_mid, 3, plan.stride, in_size=size, bn=True),
                LayerCost("conv", c_mid, last, 1, in_size=out_size, bn=True),
            ]
            if not plan.identity_shortcut:
                # avg pool (kernel = stride, ceil mode) then 1x1 conv: ceil(size / stride)
                pooled = conv_output_size(size, 1, plan.stride)
                rows.append(LayerCost("conv", c_in, last, 1, in_size=pooled, bn=True))
            size = out_size
        rows.append(LayerCost("linear", last, config.num_classes, bias=True))
        return rows

    def cost_parts(self, resolution: int) -> CostParts:
        raise NotImplementedError(
            "per-block cost parts (used by latency tables and table-driven search costs) "
            "exist only for MBConv families: an OFA-ResNet block's cost depends on the "
            "width choices of its stage and the one before, not on its slot's choice "
            "alone; use layer_costs(arch) / macs(arch) / params(arch) per arch"
        )
