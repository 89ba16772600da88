"""Analytic cost of networks: multiply-accumulates and parameters, layer by layer.

A family describes a sub-network as a list of :class:`LayerCost` rows (one per conv or
linear layer, with its input size); MACs and parameters are sums over the rows. The same
rows are what a per-layer latency table is keyed on.

Conventions (those of ``torch.utils.flop_counter`` and of the paper): MACs count the
multiply-accumulates of convolutions and linear layers only; batch norm, activations,
pooling, bias additions and the residual additions are not counted. Parameters count
every trainable tensor (conv, linear, bias, BN weight and bias), not BN running
statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

__all__ = ["CostParts", "LayerCost", "conv_output_size", "total_macs", "total_params"]


def conv_output_size(size: int, kernel_size: int, stride: int) -> int:
    """Spatial output size of a conv with 'same' padding (kernel // 2)."""
    padding = kernel_size // 2
    return (size + 2 * padding - kernel_size) // stride + 1


@dataclass(frozen=True)
class LayerCost:
    """One conv (``kind="conv"``) or linear (``kind="linear"``) layer at one input size.

    ``bn`` says whether a BatchNorm follows (its weight and bias are counted as params).
    """

    kind: str
    in_channels: int
    out_channels: int
    kernel_size: int = 1
    stride: int = 1
    groups: int = 1
    in_size: int = 1
    bias: bool = False
    bn: bool = False

    @property
    def out_size(self) -> int:
        if self.kind == "linear":
            return 1
        return conv_output_size(self.in_size, self.kernel_size, self.stride)

    @property
    def macs(self) -> int:
        per_output = (self.in_channels // self.groups) * self.kernel_size**2
        return self.out_size**2 * self.out_channels * per_output

    @property
    def params(self) -> int:
        weights = self.out_channels * (self.in_channels // self.groups) * self.kernel_size**2
        return weights + self.out_channels * (int(self.bias) + 2 * int(self.bn))


def total_macs(layers: Iterable[LayerCost]) -> int:
    return sum(layer.macs for layer in layers)


def total_params(layers: Iterable[LayerCost]) -> int:
    return sum(layer.params for layer in layers)


@dataclass(frozen=True)
class CostParts:
    """A family's layers at one resolution, split into what every sub-network has
    (``stem``, ``head``) and what each block choice adds (``blocks[(slot, k, e)]``).

    A sub-network's layers are ``stem + blocks of its active slots + head``: the cost of
    any arch is an additive function of its choices, which is what lets search evaluate
    MACs, params and table latencies of whole populations by lookups. (A block slot's
    input size depends only on the resolution: depth never skips a stride-2 block.)
    """

    resolution: int
    stem: tuple[LayerCost, ...]
    blocks: dict[tuple[int, int, int], tuple[LayerCost, ...]] = field(default_factory=dict)
    head: tuple[LayerCost, ...] = ()
