"""What a latency table times for an OFA-MobileNetV3 supernet: every distinct block
shape at a resolution, the stem (with the fixed first block), the head, and a few whole
calibration networks, all as static modules with random weights in eval mode.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..arch import Arch, MBConvSpace
from ..models.costs import total_params
from ..models.mbconv import OFAMBConvNet, block_plan
from .base import LatencyTableError

__all__ = [
    "TimedPart",
    "calibration_archs",
    "check_per_block",
    "fingerprint",
    "static_net",
    "timed_parts",
]

_SHAPELESS_FIELDS = ("resolutions", "dropout", "bn_eps", "bn_momentum")  # change no shape
_CALIBRATION_SEED = 12345  # calibration archs: seeded, distinct from any evaluation seed


def fingerprint(supernet: OFAMBConvNet) -> dict[str, Any]:
    """What fixes the shapes of every block, stem and head (not the resolutions), in the
    form a saved table holds it."""
    if not supernet.family.additive_costs:
        raise TypeError(
            "latency tables support the MBConv supernets (OFA-MobileNetV3, OFA-ProxylessNAS), "
            f"not {type(supernet).__name__}"
        )
    config = json.loads(json.dumps(supernet.config.to_dict()))
    return {key: value for key, value in config.items() if key not in _SHAPELESS_FIELDS}


def check_per_block(supernet: OFAMBConvNet) -> None:
    """Raise :class:`LatencyTableError` for a supernet whose latency is not a sum of
    per-block entries (OFA-ResNet: a block's cost depends on its neighbours' widths)."""
    if not supernet.family.additive_costs:
        raise LatencyTableError(
            f"{getattr(supernet, 'name', type(supernet).__name__)} has no per-block latency "
            "table: its blocks' costs depend on their neighbours' width choices. Search it "
            "under MACs or parameter targets (e.g. macs<=1G); ofa specialize still measures "
            "the chosen networks' latency on this device."
        )


class _Head(nn.Module):
    """final_expand -> pool -> feature_mix -> classifier, as the sub-network runs it."""

    def __init__(self, subnet: nn.Module) -> None:
        super().__init__()
        self.subnet = subnet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.subnet._head(x)


@dataclass
class TimedPart:
    """One thing to time: its key in the table, module, input shape, parameters (M)."""

    key: str
    module: nn.Module
    input_shape: tuple[int, ...]
    mparams: float = 0.0


def static_net(supernet: OFAMBConvNet, arch: Arch) -> nn.Module:
    """A randomly initialised static network of ``arch``'s shape in eval mode (modules do
    not depend on the resolution, so any resolution may be timed)."""
    shape = Arch(ks=arch.ks, e=arch.e, d=arch.d, r=supernet.space.resolutions[0])
    return supernet.build_subnet(shape).eval()


def block_subnets(supernet: OFAMBConvNet) -> dict[tuple[int, int], nn.Module]:
    """One static network per (kernel size, expand ratio), every block at that choice and
    every stage at full depth: the modules a table times its block shapes from."""
    space = supernet.space
    n, d = space.num_slots, space.largest().d
    return {
        (k, e): static_net(supernet, Arch((k,) * n, (e,) * n, d, 0))
        for k in space.kernel_sizes
        for e in space.expand_ratios
    }


def timed_parts(
    supernet: OFAMBConvNet, r: int, batch: int, subnets: dict[tuple[int, int], nn.Module]
) -> tuple[dict[tuple[int, int, int], str], list[TimedPart]]:
    """The entry key of every (slot, k, e) at resolution ``r``, and one part per distinct
    key: every block shape, the stem (with the first block) and the head."""
    costs = supernet.cost_parts(r)
    index: dict[tuple[int, int, int], str] = {}
    parts: dict[str, TimedPart] = {}
    for (k, e), subnet in subnets.items():
        for plan in block_plan(supernet.config):
            block = subnet.stages[plan.stage][plan.index]
            rows = costs.blocks[(plan.slot, k, e)]
            size = rows[0].in_size
            key = (
                f"c{plan.in_channels}-{block.depthwise.conv.in_channels}-{plan.out_channels}"
                f"_k{k}_s{plan.stride}_{plan.act}{'_se' if plan.se else ''}"
                f"{'_res' if block.shortcut else ''}_hw{size}"
            )
            index[(plan.slot, k, e)] = key
            shape = (batch, plan.in_channels, size, size)
            parts.setdefault(key, TimedPart(key, block, shape, total_params(rows) / 1e6))
    net = next(iter(subnets.values()))
    head = costs.head[0]
    stem = nn.Sequential(net.stem, net.first_block)
    head_shape = (batch, head.in_channels, head.in_size, head.in_size)
    fixed = [
        TimedPart(f"stem@{r}", stem, (batch, 3, r, r), total_params(costs.stem) / 1e6),
        TimedPart(f"head@{r}", _Head(net), head_shape, total_params(costs.head) / 1e6),
    ]
    return index, list(parts.values()) + fixed


def calibration_archs(space: MBConvSpace, r: int, count: int) -> list[Arch]:
    """Smallest, largest, then seeded random archs at resolution ``r``."""
    rng = random.Random(_CALIBRATION_SEED + r)
    archs = [space.smallest(r), space.largest(r)]
    while len(archs) < count:
        a = space.sample(rng)
        archs.append(Arch(ks=a.ks, e=a.e, d=a.d, r=r))
    return archs[:count]
