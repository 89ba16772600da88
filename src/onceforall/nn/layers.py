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
    "shortcut_pool",
    "DeepStem",
    "Bottleneck",
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


def shortcut_pool(stride: int) -> nn.Module:
    """The D-variant shortcut's average pool: kernel = stride, ``ceil_mode=True`` (a
    window cut by the border averages over the pixels inside); nothing at stride 1."""
    if stride == 1:
        return nn.Identity()
    return nn.AvgPool2d(kernel_size=stride, stride=stride, padding=0, ceil_mode=True)


class DeepStem(nn.Module):
    """Static deep stem: ``conv1`` (3x3/2), optional ``residual`` (3x3, added to its
    input), ``conv2`` (3x3); each conv + BN + ReLU."""

    def __init__(
        self, mid: int, out: int, residual: bool, bn_eps: float = 1e-5, bn_momentum: float = 0.1
    ) -> None:
        super().__init__()
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        self.conv1 = ConvBNAct(3, mid, 3, stride=2, act="relu", **bn)
        self.residual = ConvBNAct(mid, mid, 3, act="relu", **bn) if residual else None
        self.conv2 = ConvBNAct(mid, out, 3, act="relu", **bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.residual is not None:
            x = x + self.residual(x)
        return self.conv2(x)


class Bottleneck(nn.Module):
    """Static ResNet-D bottleneck: ``conv1`` 1x1, ``conv2`` 3x3 with stride, ``conv3``
    1x1 (BN after each, ReLU after the first two), shortcut the identity or ``shortcut``
    (avg pool + 1x1 conv + BN), ReLU after the sum."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int,
        conv_shortcut: bool,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        self.conv1 = ConvBNAct(in_channels, mid_channels, 1, act="relu", **bn)
        self.conv2 = ConvBNAct(mid_channels, mid_channels, 3, stride, act="relu", **bn)
        self.conv3 = ConvBNAct(mid_channels, out_channels, 1, act=None, **bn)
        if conv_shortcut:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    pool=shortcut_pool(stride),
                    conv=nn.Conv2d(in_channels, out_channels, 1, bias=False),
                    bn=nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
                )
            )
        else:
            if stride != 1 or in_channels != out_channels:
                raise ValueError("an identity shortcut needs stride 1 and in == out channels")
            self.shortcut = None
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.act(self.conv3(self.conv2(self.conv1(x))) + skip)
