"""Static building blocks: what an extracted sub-network is made of.

Only plain ``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.Linear`` and standard activations, so
an extracted network is an ordinary PyTorch model (scriptable, ONNX-exportable, loadable
without this package's supernet). The elastic supernet uses the same child names, which
is what lets extraction copy weights key by key.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = [
    "make_divisible",
    "make_activation",
    "se_hidden_channels",
    "ConvBNAct",
    "SqueezeExcite",
    "MBConv",
]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "h_swish": nn.Hardswish,
}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below 90 % of it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def make_activation(name: str | None) -> nn.Module:
    if name is None:
        return nn.Identity()
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(_ACTIVATIONS)}") from None


def se_hidden_channels(channels: int, reduction: int = 4) -> int:
    """Width of the squeeze-excite bottleneck for ``channels`` input channels."""
    return make_divisible(channels // reduction)


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + optional BatchNorm2d + optional activation, children named
    ``conv``, ``bn``, ``act``. 'Same' padding (kernel // 2)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str | None = None,
        bn: bool = True,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv"] = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        if bn:
            layers["bn"] = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        if act is not None:
            layers["act"] = make_activation(act)
        super().__init__(layers)


class SqueezeExcite(nn.Module):
    """Global pool, 1x1 reduce (bias) + ReLU, 1x1 expand (bias) + h-sigmoid, rescale."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=True)
        self.expand = nn.Conv2d(hidden, channels, 1, bias=True)
        self.relu = nn.ReLU()
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.gate(self.expand(self.relu(self.reduce(s))))
        return x * s


class MBConv(nn.Module):
    """Inverted bottleneck: [1x1 expand] -> KxK depthwise -> [SE] -> 1x1 project,
    with an identity shortcut when ``shortcut`` is set."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        act: str,
        use_se: bool,
        shortcut: bool,
        has_expand: bool = True,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        if has_expand:
            self.expand = ConvBNAct(in_channels, mid_channels, 1, act=act, **bn)
        else:
            if mid_channels != in_channels:
                raise ValueError("a block without expand conv needs mid == in channels")
            self.expand = None
        self.depthwise = ConvBNAct(
            mid_channels, mid_channels, kernel_size, stride, groups=mid_channels, act=act, **bn
        )
        self.se = SqueezeExcite(mid_channels, se_hidden_channels(mid_channels)) if use_se else None
        self.project = ConvBNAct(mid_channels, out_channels, 1, act=None, **bn)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.shortcut else y
