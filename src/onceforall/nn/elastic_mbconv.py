"""Elastic operators: layers that hold the largest weights and run any smaller choice.

- Elastic width: the active channels are always the *first* ones, so a smaller layer is
  a leading slice (a view, no copy) of the largest layer's tensors.
- Elastic kernel: the depthwise conv stores a KxK weight (K the largest size); a smaller
  kernel is the centre of the next larger one, flattened per channel and multiplied by a
  learned matrix (one per layer and size step, shared by all channels, identity at init).
- Batch norm over fewer channels uses the first channels' affine parameters and running
  statistics.

:class:`ElasticMBConv` combines them into the supernet's block; it can be extracted into
a static :class:`onceforall.nn.layers.MBConv` and its hidden channels sorted by importance.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import make_activation, make_divisible, se_hidden_channels

__all__ = [
    "ElasticConv2d",
    "ElasticDepthwiseConv2d",
    "ElasticBatchNorm2d",
    "ElasticSqueezeExcite",
    "ElasticMBConv",
]


class ElasticConv2d(nn.Conv2d):
    """A dense conv whose active input channels follow the input and whose active
    output channels are the first ``out_channels``."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, bias: bool = False
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias
        )

    def forward(self, x: torch.Tensor, out_channels: int | None = None) -> torch.Tensor:
        out = self.out_channels if out_channels is None else out_channels
        weight = self.weight[:out, : x.shape[1]]
        bias = None if self.bias is None else self.bias[:out]
        return F.conv2d(x, weight, bias, self.stride, self.padding)


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over the first ``C`` channels of its parameters and statistics, where
    ``C`` is the number of channels of the input. Running statistics of the slice are
    updated in place, with the same momentum rules as ``nn.BatchNorm2d`` (momentum
    ``None`` means a cumulative average, as used by BN recalibration)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        if channels == self.num_features:
            return super().forward(x)
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
        use_batch_stats = self.training or not self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean[:channels] if self.track_running_stats else None,
            self.running_var[:channels] if self.track_running_stats else None,
            self.weight[:channels],
            self.bias[:channels],
            use_batch_stats,
            factor,
            self.eps,
        )


class ElasticDepthwiseConv2d(nn.Module):
    """Depthwise conv with elastic kernel size and elastic channel count."""

    def __init__(self, channels: int, kernel_sizes: Sequence[int], stride: int = 1) -> None:
        super().__init__()
        self.kernel_sizes = tuple(sorted(set(kernel_sizes)))
        self.max_kernel = self.kernel_sizes[-1]
        self.channels = channels
        self.stride = stride
        reference = nn.Conv2d(channels, channels, self.max_kernel, groups=channels, bias=False)
        self.weight = nn.Parameter(reference.weight.detach().clone())
        # One matrix per step down the ladder of sizes, e.g. "7to5" (25x25) and "5to3" (9x9).
        self.kernel_transforms = nn.ParameterDict()
        for larger, smaller in zip(self.kernel_sizes[::-1], self.kernel_sizes[-2::-1]):
            self.kernel_transforms[f"{larger}to{smaller}"] = nn.Parameter(
                torch.eye(smaller * smaller)
            )

    def kernel(self, kernel_size: int, channels: int | None = None) -> torch.Tensor:
        """The effective ``(channels, 1, k, k)`` weight for ``kernel_size``."""
        if kernel_size not in self.kernel_sizes:
            raise ValueError(f"kernel size {kernel_size} not in {self.kernel_sizes}")
        channels = self.channels if channels is None else channels
        weight = self.weight[:channels]
        size = self.max_kernel
        for smaller in self.kernel_sizes[::-1]:
            if smaller >= size or smaller < kernel_size:
                continue
            start = (size - smaller) // 2
            centre = weight[:, :, start : start + smaller, start : start + smaller]
            matrix = self.kernel_transforms[f"{size}to{smaller}"]
            weight = F.linear(centre.reshape(channels, smaller * smaller), matrix)
            weight = weight.reshape(channels, 1, smaller, smaller)
            size = smaller
        return weight

    def forward(self, x: torch.Tensor, kernel_size: int) -> torch.Tensor:
        channels = x.shape[1]
        weight = self.kernel(kernel_size, channels)
        return F.conv2d(x, weight, None, self.stride, kernel_size // 2, 1, channels)


class ElasticSqueezeExcite(nn.Module):
    """Squeeze-excite whose bottleneck width follows the active channel count
    (``make_divisible(C // 4)``), as in the static :class:`~onceforall.nn.layers.SqueezeExcite`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = se_hidden_channels(channels)
        self.reduce = ElasticConv2d(channels, hidden, 1, bias=True)
        self.expand = ElasticConv2d(hidden, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        s = x.mean((2, 3), keepdim=True)
        s = F.relu(self.reduce(s, se_hidden_channels(channels)))
        s = F.hardsigmoid(self.expand(s, channels))
        return x * s


def _conv_bn_act(conv: nn.Module, bn: nn.Module, act: str | None) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(conv=conv, bn=bn)
    if act is not None:
        layers["act"] = make_activation(act)
    return nn.Sequential(layers)


class ElasticMBConv(nn.Module):
    """The supernet's inverted-bottleneck block with elastic kernel size and expand ratio.

    Children are named like the static :class:`~onceforall.nn.layers.MBConv` (``expand``,
    ``depthwise``, ``se``, ``project``), each a ``conv``/``bn``/``act`` sequence.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        act: str,
        use_se: bool,
        kernel_sizes: Sequence[int],
        expand_ratios: Sequence[int],
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.act_name = act
        self.use_se = use_se
        self.kernel_sizes = tuple(sorted(set(kernel_sizes)))
        self.expand_ratios = tuple(sorted(set(expand_ratios)))
        self.bn_eps = bn_eps
        self.bn_momentum = bn_momentum
        max_mid = self.mid_channels(self.expand_ratios[-1])

        def bn(c: int) -> ElasticBatchNorm2d:
            return ElasticBatchNorm2d(c, eps=bn_eps, momentum=bn_momentum)

        self.expand = _conv_bn_act(ElasticConv2d(in_channels, max_mid), bn(max_mid), act)
        self.depthwise = _conv_bn_act(
            ElasticDepthwiseConv2d(max_mid, self.kernel_sizes, stride), bn(max_mid), act
        )
        self.se = ElasticSqueezeExcite(max_mid) if use_se else None
        self.project = _conv_bn_act(ElasticConv2d(max_mid, out_channels), bn(out_channels), None)
        self.shortcut = stride == 1 and in_channels == out_channels
        self.active_kernel = self.kernel_sizes[-1]
        self.active_expand = self.expand_ratios[-1]

    def mid_channels(self, expand_ratio: float) -> int:
        return make_divisible(round(self.in_channels * expand_ratio))

    def set_active(self, kernel_size: int, expand_ratio: int) -> None:
        if kernel_size not in self.kernel_sizes:
            raise ValueError(f"kernel size {kernel_size} not in {self.kernel_sizes}")
        if expand_ratio not in self.expand_ratios:
            raise ValueError(f"expand ratio {expand_ratio} not in {self.expand_ratios}")
        self.active_kernel = kernel_size
        self.active_expand = expand_ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.mid_channels(self.active_expand)
        y = self.expand.conv(x, mid)
        y = self.expand.act(self.expand.bn(y))
        y = self.depthwise.conv(y, self.active_kernel)
        y = self.depthwise.act(self.depthwise.bn(y))
        if self.se is not None:
            y = self.se(y)
        y = self.project.bn(self.project.conv(y))
        return x + y if self.shortcut else y

    # ---------------------------------------------------------------- extraction
    # ------------------------------------------------------------ channel sorting
    @torch.no_grad()
    def sort_channels(self) -> None:
        """Reorder hidden channels by importance (L1 norm of the project conv's weights
        per input channel, largest first), so that smaller expand ratios keep the most
        important ones. The block computes exactly the same function afterwards at its
        largest expand ratio; squeeze-excite bottleneck channels are sorted the same way.
        """
        importance = self.project.conv.weight.abs().sum(dim=(0, 2, 3))
        order = torch.argsort(importance, descending=True, stable=True)
        _permute_out(self.expand.conv, order)
        _permute_bn(self.expand.bn, order)
        self.depthwise.conv.weight.copy_(self.depthwise.conv.weight[order])
        _permute_bn(self.depthwise.bn, order)
        self.project.conv.weight.copy_(self.project.conv.weight[:, order])
        if self.se is not None:
            _permute_in(self.se.reduce, order)
            _permute_out(self.se.expand, order)
            se_importance = self.se.expand.weight.abs().sum(dim=(0, 2, 3))
            se_order = torch.argsort(se_importance, descending=True, stable=True)
            _permute_out(self.se.reduce, se_order)
            _permute_in(self.se.expand, se_order)


def _permute_out(conv: nn.Conv2d, order: torch.Tensor) -> None:
    conv.weight.copy_(conv.weight[order])
    if conv.bias is not None:
        conv.bias.copy_(conv.bias[order])


def _permute_in(conv: nn.Conv2d, order: torch.Tensor) -> None:
    conv.weight.copy_(conv.weight[:, order])


def _permute_bn(bn: nn.BatchNorm2d, order: torch.Tensor) -> None:
    for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        tensor.copy_(tensor[order])
