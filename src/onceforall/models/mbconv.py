"""The MBConv supernet family: OFA-MobileNetV3 (the paper's main space) and
OFA-ProxylessNAS (SPEC section 1).

A network is a table: a fixed stem and first block, then one row per stage (width,
first-block stride, activation, squeeze-excite, block slots), then a fixed head. The two
named spaces are two tables: the defaults of :class:`MBConvNetConfig` and
:func:`proxyless_config`. :func:`block_plan` reads the table
once; the elastic supernet, the static sub-network and the cost model are all built from
that plan, so they cannot disagree on shapes.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from ..arch import Arch, MBConvSpace
from ..nn.elastic_mbconv import ElasticMBConv
from ..nn.layers import ConvBNAct, MBConv, make_divisible, se_hidden_channels
from .base import Supernet
from .costs import CostParts, LayerCost, conv_output_size

__all__ = [
    "StageSpec",
    "MBV3_STAGES",
    "PROXYLESS_STAGES",
    "proxyless_config",
    "MBConvNetConfig",
    "OFAMBConvNet",
    "MBConvSubnet",
    "BlockPlan",
    "block_plan",
]


@dataclass(frozen=True)
class StageSpec:
    """One elastic stage: output width (before the width multiplier), stride of its
    first block, activation, squeeze-excite on/off, number of block slots."""

    width: int
    stride: int
    act: str
    se: bool
    max_depth: int = 4


MBV3_STAGES: tuple[StageSpec, ...] = (
    StageSpec(24, 2, "relu", False),
    StageSpec(40, 2, "relu", True),
    StageSpec(80, 2, "h_swish", False),
    StageSpec(112, 1, "h_swish", True),
    StageSpec(160, 2, "h_swish", True),
)

# OFA-ProxylessNAS: MobileNetV2-style widths, ReLU6, no SE; the last stage is one block
# whose kernel and expand ratio are elastic but whose depth is not.
PROXYLESS_STAGES: tuple[StageSpec, ...] = (
    StageSpec(24, 2, "relu6", False),
    StageSpec(40, 2, "relu6", False),
    StageSpec(80, 2, "relu6", False),
    StageSpec(96, 1, "relu6", False),
    StageSpec(192, 2, "relu6", False),
    StageSpec(320, 1, "relu6", False, max_depth=1),
)


@dataclass(frozen=True)
class MBConvNetConfig:
    """Everything that fixes the shape of an MBConv supernet. The defaults are
    OFA-MobileNetV3; :func:`proxyless_config` gives OFA-ProxylessNAS.

    The head is ``final_expand`` (1x1 conv + BN + ``final_act`` before the global pool),
    then, if ``head_width`` is set, ``feature_mix`` (1x1 conv + ``final_act`` after the
    pool, no BN), then dropout and the linear classifier.
    """

    width_mult: float = 1.0
    num_classes: int = 1000
    stem_width: int = 16
    stem_act: str = "h_swish"
    first_block_width: int = 16
    first_block_act: str = "relu"
    first_block_shortcut: bool = True  # identity shortcut when its widths agree
    stages: tuple[StageSpec, ...] = MBV3_STAGES
    final_expand_width: int = 960
    final_act: str = "h_swish"
    head_width: int | None = 1280
    kernel_sizes: tuple[int, ...] = (3, 5, 7)
    expand_ratios: tuple[int, ...] = (3, 4, 6)
    depths: tuple[int, ...] = (2, 3, 4)
    resolutions: tuple[int, ...] = field(default_factory=lambda: tuple(range(128, 225, 4)))
    dropout: float = 0.1
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1

    def channels(self, base: int) -> int:
        return make_divisible(base * self.width_mult)

    @functools.cached_property
    def space(self) -> MBConvSpace:
        """The arch space of this config (built once per config)."""
        return MBConvSpace(
            kernel_sizes=self.kernel_sizes,
            expand_ratios=self.expand_ratios,
            depths=self.depths,
            stage_max_depths=tuple(s.max_depth for s in self.stages),
            resolutions=self.resolutions,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = [asdict(s) for s in self.stages]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MBConvNetConfig:
        data = dict(data)
        data["stages"] = tuple(StageSpec(**s) for s in data["stages"])
        for key in ("kernel_sizes", "expand_ratios", "depths", "resolutions"):
            data[key] = tuple(data[key])
        return cls(**data)


def proxyless_config(width_mult: float = 1.3, **overrides: Any) -> MBConvNetConfig:
    """OFA-ProxylessNAS: stem 32, first block 16 (no shortcut), the six stages of
    :data:`PROXYLESS_STAGES`, a 1280-wide feature mix with BN before the pool, ReLU6
    everywhere, BN eps 1e-3."""
    settings: dict[str, Any] = dict(
        width_mult=width_mult,
        stem_width=32,
        stem_act="relu6",
        first_block_width=16,
        first_block_act="relu6",
        first_block_shortcut=False,
        stages=PROXYLESS_STAGES,
        final_expand_width=1280,
        final_act="relu6",
        head_width=None,
        bn_eps=1e-3,
    )
    settings.update(overrides)
    return MBConvNetConfig(**settings)


@dataclass(frozen=True)
class BlockPlan:
    """One elastic block slot with its fixed shape."""

    stage: int
    index: int  # position inside the stage
    slot: int  # position in the arch lists
    in_channels: int
    out_channels: int
    stride: int
    act: str
    se: bool


def block_plan(config: MBConvNetConfig) -> Iterator[BlockPlan]:
    """Every elastic block slot of the supernet, stage by stage."""
    in_channels = config.channels(config.first_block_width)
    slot = 0
    for s, stage in enumerate(config.stages):
        out_channels = config.channels(stage.width)
        for i in range(stage.max_depth):
            yield BlockPlan(
                stage=s,
                index=i,
                slot=slot,
                in_channels=in_channels,
                out_channels=out_channels,
                stride=stage.stride if i == 0 else 1,
                act=stage.act,
                se=stage.se,
            )
            in_channels = out_channels
            slot += 1


class _MBConvNetBody(nn.Module):
    """Stem, first block, head: the parts shared by supernet and sub-network."""

    def _build_fixed_parts(self, config: MBConvNetConfig) -> None:
        bn = {"bn_eps": config.bn_eps, "bn_momentum": config.bn_momentum}
        stem = config.channels(config.stem_width)
        first = config.channels(config.first_block_width)
        last_stage = config.channels(config.stages[-1].width)
        final = config.channels(config.final_expand_width)
        self.stem = ConvBNAct(3, stem, 3, stride=2, act=config.stem_act, **bn)
        self.first_block = MBConv(
            stem,
            stem,
            first,
            3,
            1,
            config.first_block_act,
            use_se=False,
            shortcut=config.first_block_shortcut and stem == first,
            has_expand=False,
            **bn,
        )
        self.final_expand = ConvBNAct(last_stage, final, 1, act=config.final_act, **bn)
        if config.head_width is None:
            self.feature_mix = None
            classifier_in = final
        else:
            classifier_in = config.channels(config.head_width)
            self.feature_mix = ConvBNAct(final, classifier_in, 1, act=config.final_act, bn=False)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(classifier_in, config.num_classes)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_expand(x)
        x = x.mean((2, 3), keepdim=True)
        if self.feature_mix is not None:
            x = self.feature_mix(x)
        return self.classifier(self.dropout(torch.flatten(x, 1)))


class MBConvSubnet(_MBConvNetBody):
    """A static sub-network of an MBConv supernet: plain Conv2d / BatchNorm2d / Linear.

    Rebuildable from ``config`` and ``arch`` alone (see :meth:`spec`), so an exported
    model needs only its arch JSON and its weights.
    """

    def __init__(self, config: MBConvNetConfig, arch: Arch) -> None:
        super().__init__()
        self.config = config
        self.arch = config.space.parse(arch)
        self._build_fixed_parts(config)
        stages: list[list[nn.Module]] = [[] for _ in config.stages]
        bn = {"bn_eps": config.bn_eps, "bn_momentum": config.bn_momentum}
        for plan in block_plan(config):
            if plan.index >= self.arch.d[plan.stage]:
                continue
            mid = make_divisible(round(plan.in_channels * self.arch.e[plan.slot]))
            stages[plan.stage].append(
                MBConv(
                    plan.in_channels,
                    mid,
                    plan.out_channels,
                    self.arch.ks[plan.slot],
                    plan.stride,
                    plan.act,
                    plan.se,
                    shortcut=plan.stride == 1 and plan.in_channels == plan.out_channels,
                    **bn,
                )
            )
        self.stages = nn.ModuleList(nn.Sequential(*blocks) for blocks in stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_block(self.stem(x))
        for stage in self.stages:
            x = stage(x)
        return self._head(x)

    def feature_body(self) -> list[tuple[str, nn.Module]]:
        """The modules before the head, in the order they run (see models.features)."""
        stages = [(f"stage{i}", stage) for i, stage in enumerate(self.stages)]
        return [("stem", self.stem), ("first_block", self.first_block), *stages]

    def spec(self) -> dict[str, Any]:
        """JSON-serialisable description from which the network can be rebuilt."""
        return {
            "family": "mbconv",
            "config": self.config.to_dict(),
            "arch": self.arch.to_dict(),
        }


class OFAMBConvNet(_MBConvNetBody, Supernet):
    """The elastic MBConv supernet (OFA-MobileNetV3 or OFA-ProxylessNAS, by config).

    >>> net = OFAMBConvNet(MBConvNetConfig(num_classes=10))
    >>> arch = net.space.sample(0)
    >>> net.set_active(arch); logits = net(torch.randn(2, 3, arch.r, arch.r))
    >>> subnet = net.extract(arch)  # an ordinary nn.Module
    """

    def __init__(self, config: MBConvNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or MBConvNetConfig()
        self.space = self.config.space
        self._build_fixed_parts(self.config)
        bn = {"bn_eps": self.config.bn_eps, "bn_momentum": self.config.bn_momentum}
        stages: list[list[ElasticMBConv]] = [[] for _ in self.config.stages]
        for plan in block_plan(self.config):
            stages[plan.stage].append(
                ElasticMBConv(
                    plan.in_channels,
                    plan.out_channels,
                    plan.stride,
                    plan.act,
                    plan.se,
                    self.config.kernel_sizes,
                    self.config.expand_ratios,
                    **bn,
                )
            )
        self.stages = nn.ModuleList(nn.ModuleList(blocks) for blocks in stages)
        self.active_depths = [len(blocks) for blocks in stages]
        self._cost_parts: dict[int, CostParts] = {}
        self.set_active(self.space.largest())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_block(self.stem(x))
        for blocks, depth in zip(self.stages, self.active_depths):
            for block in blocks[:depth]:
                x = block(x)
        return self._head(x)

    def blocks(self) -> Iterator[tuple[BlockPlan, ElasticMBConv]]:
        for plan in block_plan(self.config):
            yield plan, self.stages[plan.stage][plan.index]

    def _activate(self, arch: Arch) -> None:
        self.active_depths = list(arch.d)
        for plan, block in self.blocks():
            if plan.index < arch.d[plan.stage]:
                block.set_active(arch.ks[plan.slot], arch.e[plan.slot])

    def build_subnet(self, arch: Arch) -> MBConvSubnet:
        return MBConvSubnet(self.config, arch)

    def _computed_weights(self, arch: Arch) -> dict[str, torch.Tensor]:
        computed = {}
        for plan, block in self.blocks():
            if plan.index < arch.d[plan.stage]:
                mid = block.mid_channels(arch.e[plan.slot])
                key = f"stages.{plan.stage}.{plan.index}.depthwise.conv.weight"
                computed[key] = block.depthwise.conv.kernel(arch.ks[plan.slot], mid)
        return computed

    def residual_norms(self) -> list[nn.BatchNorm2d]:
        blocks = [self.first_block, *(block for _, block in self.blocks())]
        return [block.project.bn for block in blocks if block.shortcut]

    @torch.no_grad()
    def sort_channels(self) -> None:
        for _, block in self.blocks():
            block.sort_channels()

    def layer_costs(self, arch: Arch) -> list[LayerCost]:
        parts = self.cost_parts(arch.r)
        rows = list(parts.stem)
        for slot in self.space.active_slots(arch):
            rows += parts.blocks[(slot, arch.ks[slot], arch.e[slot])]
        return rows + list(parts.head)

    def cost_parts(self, resolution: int) -> CostParts:
        """The layers at ``resolution``, split into fixed parts and per-(slot, k, e)
        blocks (computed once per resolution)."""
        if resolution not in self._cost_parts:
            self._cost_parts[resolution] = self._build_cost_parts(resolution)
        return self._cost_parts[resolution]

    def _build_cost_parts(self, resolution: int) -> CostParts:
        config = self.config
        stem = config.channels(config.stem_width)
        first = config.channels(config.first_block_width)
        size = resolution
        front = [LayerCost("conv", 3, stem, 3, 2, in_size=size, bn=True)]
        size = conv_output_size(size, 3, 2)
        front += [
            LayerCost("conv", stem, stem, 3, 1, groups=stem, in_size=size, bn=True),
            LayerCost("conv", stem, first, 1, in_size=size, bn=True),
        ]
        blocks: dict[tuple[int, int, int], tuple[LayerCost, ...]] = {}
        for plan in block_plan(config):
            for k in config.kernel_sizes:
                for e in config.expand_ratios:
                    blocks[(plan.slot, k, e)] = self._block_costs(plan, k, e, size)
            size = conv_output_size(size, 1, plan.stride)  # 'same' padding: k-independent
        last_stage = config.channels(config.stages[-1].width)
        final = config.channels(config.final_expand_width)
        back = [LayerCost("conv", last_stage, final, 1, in_size=size, bn=True)]
        classifier_in = final
        if config.head_width is not None:
            classifier_in = config.channels(config.head_width)
            back.append(LayerCost("conv", final, classifier_in, 1, in_size=1))
        back.append(LayerCost("linear", classifier_in, config.num_classes, bias=True))
        return CostParts(resolution, tuple(front), blocks, tuple(back))

    @staticmethod
    def _block_costs(plan: BlockPlan, k: int, e: int, size: int) -> tuple[LayerCost, ...]:
        mid = make_divisible(round(plan.in_channels * e))
        rows = [
            LayerCost("conv", plan.in_channels, mid, 1, in_size=size, bn=True),
            LayerCost("conv", mid, mid, k, plan.stride, groups=mid, in_size=size, bn=True),
        ]
        if plan.se:
            hidden = se_hidden_channels(mid)
            rows.append(LayerCost("conv", mid, hidden, 1, in_size=1, bias=True))
            rows.append(LayerCost("conv", hidden, mid, 1, in_size=1, bias=True))
        out_size = conv_output_size(size, k, plan.stride)
        rows.append(LayerCost("conv", mid, plan.out_channels, 1, in_size=out_size, bn=True))
        return tuple(rows)
