"""Elastic operators of the OFA-ResNet family (ResNet-50D with elastic width, expand
ratio and depth).

Every elastic choice keeps the *first* channels, so a sub-network's tensors are leading
slices of the supernet's; batch norm over fewer channels is
:class:`~onceforall.nn.elastic_mbconv.ElasticBatchNorm2d`. What ResNets need beyond the MBConv
operators: dense 3x3 convs with stride whose input *and* output channels are both
elastic (:class:`ElasticStridedConv2d`), a classifier with elastic input features
(:class:`ElasticLinear`), the deep stem (:class:`ElasticDeepStem`) and the bottleneck
block (:class:`ElasticBottleneck`). Children are named like the static layers of
:mod:`onceforall.models.resnet`, which is what lets extraction copy weights by name.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .elastic_mbconv import ElasticBatchNorm2d, ElasticConv2d
from .layers import make_divisible, shortcut_pool

__all__ = [
    "ElasticStridedConv2d",
    "ElasticLinear",
    "ElasticDeepStem",
    "ElasticBottleneck",
    "bottleneck_mid_channels",
]


def bottleneck_mid_channels(out_channels: int, expand_ratio: float) -> int:
    """Hidden width of a bottleneck: ``make_divisible(round(out * e), 8)`` (of its
    *output* width, as the authors define it)."""
    return make_divisible(round(out_channels * expand_ratio))


class ElasticStridedConv2d(ElasticConv2d):
    """A dense KxK conv with stride and 'same' padding (kernel // 2); its active input
    channels follow the input and its active output channels are the first
    ``out_channels``."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1
    ) -> None:
        nn.Conv2d.__init__(
            self,
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=False,
        )


class ElasticLinear(nn.Linear):
    """A linear layer whose active input features follow the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[:, : x.shape[1]], self.bias)


def _conv_bn(conv: nn.Module, bn: nn.Module, relu: bool) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(conv=conv, bn=bn)
    if relu:
        layers["act"] = nn.ReLU()
    return nn.Sequential(layers)


def _run(layer: nn.Sequential, x: torch.Tensor, out_channels: int) -> torch.Tensor:
    y = layer.bn(layer.conv(x, out_channels))
    return layer.act(y) if hasattr(layer, "act") else y


class ElasticDeepStem(nn.Module):
    """The ResNet-D deep stem: 3x3/2 conv to ``mid`` channels, a residual 3x3 conv block
    (``x + relu(bn(conv(x)))``, no activation after the sum) that depth can skip, 3x3
    conv to ``out`` channels; every conv followed by BN and ReLU. ``mid`` and ``out`` are
    elastic (set by :meth:`set_active`)."""

    def __init__(
        self, max_mid: int, max_out: int, bn_eps: float = 1e-5, bn_momentum: float = 0.1
    ) -> None:
        super().__init__()

        def bn(c: int) -> ElasticBatchNorm2d:
            return ElasticBatchNorm2d(c, eps=bn_eps, momentum=bn_momentum)

        self.conv1 = _conv_bn(ElasticStridedConv2d(3, max_mid, 3, 2), bn(max_mid), relu=True)
        self.residual = _conv_bn(
            ElasticStridedConv2d(max_mid, max_mid, 3, 1), bn(max_mid), relu=True
        )
        self.conv2 = _conv_bn(ElasticStridedConv2d(max_mid, max_out, 3, 1), bn(max_out), True)
        self.active_mid = max_mid
        self.active_out = max_out
        self.use_residual = True

    def set_active(self, mid: int, out: int, use_residual: bool) -> None:
        self.active_mid, self.active_out, self.use_residual = mid, out, use_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _run(self.conv1, x, self.active_mid)
        if self.use_residual:
            x = x + _run(self.residual, x, self.active_mid)
        return _run(self.conv2, x, self.active_out)


class ElasticBottleneck(nn.Module):
    """ResNet-D bottleneck with elastic input, hidden and output widths.

    ``conv1`` (1x1, in -> mid), ``conv2`` (3x3 with the block's stride, mid -> mid),
    ``conv3`` (1x1, mid -> out), each with BN (and ReLU but the last); the shortcut is
    the identity when the block keeps its stride and channel choices, else ``shortcut``:
    average pool (kernel = stride, ``ceil_mode=True``; nothing at stride 1) + 1x1 conv +
    BN. ReLU after the sum. ``mid = make_divisible(round(out * e))``.
    """

    def __init__(
        self,
        in_choices: Sequence[int],
        out_choices: Sequence[int],
        stride: int,
        expand_ratios: Sequence[float],
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_choices = tuple(in_choices)
        self.out_choices = tuple(out_choices)
        self.stride = stride
        self.expand_ratios = tuple(sorted(set(expand_ratios)))
        max_in, max_out = max(self.in_choices), max(self.out_choices)
        max_mid = bottleneck_mid_channels(max_out, self.expand_ratios[-1])

        def bn(c: int) -> ElasticBatchNorm2d:
            return ElasticBatchNorm2d(c, eps=bn_eps, momentum=bn_momentum)

        self.conv1 = _conv_bn(ElasticConv2d(max_in, max_mid, 1), bn(max_mid), relu=True)
        self.conv2 = _conv_bn(
            ElasticStridedConv2d(max_mid, max_mid, 3, stride), bn(max_mid), relu=True
        )
        self.conv3 = _conv_bn(ElasticConv2d(max_mid, max_out, 1), bn(max_out), relu=False)
        if self.identity_shortcut:
            self.shortcut = None
        else:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    pool=shortcut_pool(stride),
                    conv=ElasticConv2d(max_in, max_out, 1),
                    bn=bn(max_out),
                )
            )
        self.act = nn.ReLU()
        self.active_out = max_out
        self.active_expand = self.expand_ratios[-1]

    @property
    def identity_shortcut(self) -> bool:
        return self.stride == 1 and self.in_choices == self.out_choices

    def set_active(self, out_channels: int, expand_ratio: float) -> None:
        if out_channels not in self.out_choices:
            raise ValueError(f"output width {out_channels} not in {self.out_choices}")
        if expand_ratio not in self.expand_ratios:
            raise ValueError(f"expand ratio {expand_ratio} not in {self.expand_ratios}")
        self.active_out = out_channels
        self.active_expand = expand_ratio

    @property
    def active_mid(self) -> int:
        return bottleneck_mid_channels(self.active_out, self.active_expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid, out = self.active_mid, self.active_out
        if self.shortcut is None:
            skip = x
        else:
            skip = self.shortcut.bn(self.shortcut.conv(self.shortcut.pool(x), out))
        y = _run(self.conv1, x, mid)
        y = _run(self.conv2, y, mid)
        y = _run(self.conv3, y, out)
        return self.act(y + skip)

    # ------------------------------------------------------------ channel sorting
    @torch.no_grad()
    def sort_channels(self) -> None:
        """Reorder the hidden channels by importance, largest first, as the authors do:
        ``conv2``'s outputs by the L1 norm of ``conv3``'s weights per input channel, then
        ``conv1``'s outputs by the L1 norm of the (re-ordered) ``conv2``'s weights per
        input channel. The block computes the same function afterwards whenever it runs
        its full hidden width (largest expand ratio at its largest output width)."""
        order = _importance_order(self.conv3.conv.weight)
        _permute_rows(self.conv2, order)
        self.conv3.conv.weight.copy_(self.conv3.conv.weight[:, order])
        order = _importance_order(self.conv2.conv.weight)
        _permute_rows(self.conv1, order)
        self.conv2.conv.weight.copy_(self.conv2.conv.weight[:, order])


def _importance_order(weight: torch.Tensor) -> torch.Tensor:
    importance = weight.abs().sum(dim=(0, 2, 3))
    return torch.argsort(importance, descending=True, stable=True)


def _permute_rows(layer: nn.Sequential, order: torch.Tensor) -> None:
    """Permute a conv's output channels and its BN's entries together."""
    layer.conv.weight.copy_(layer.conv.weight[order])
    for tensor in (layer.bn.weight, layer.bn.bias, layer.bn.running_mean, layer.bn.running_var):
        tensor.copy_(tensor[order])
