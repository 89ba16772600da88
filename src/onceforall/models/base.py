"""What every supernet family shares: arch handling, extraction by slicing, costs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping, Sequence

import torch
from torch import nn

from ..arch import ArchInput, ArchValue, Space
from .costs import CostParts, LayerCost, total_macs, total_params
from .family import Family, family_for
from .features import DEFAULT_OUT_INDICES, features_of

__all__ = ["Supernet", "copy_leading_slices"]


@torch.no_grad()
def copy_leading_slices(
    target: nn.Module,
    source: Mapping[str, torch.Tensor],
    overrides: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Fill every parameter and buffer of ``target`` with the leading slice of the
    same-named tensor in ``source`` (elastic width keeps the *first* channels), or with
    ``overrides[name]`` where given (for tensors that are computed, not sliced)."""
    overrides = overrides or {}
    for name, tensor in target.state_dict(keep_vars=True).items():
        if name in overrides:
            value = overrides[name]
        else:
            if name not in source:
                raise KeyError(f"supernet has no tensor {name!r} for the extracted network")
            full = source[name]
            value = full[tuple(slice(0, n) for n in tensor.shape)]
        if value.shape != tensor.shape:
            raise ValueError(f"{name}: shape {tuple(value.shape)} != {tuple(tensor.shape)}")
        tensor.copy_(value)


class Supernet(nn.Module, ABC):
    """Base of the supernet families. A family implements ``_activate(arch)``,
    ``build_subnet(arch)``, ``_computed_weights(arch)`` and ``layer_costs(arch)``."""

    space: Space

    @property
    def family(self) -> Family:
        """The family this supernet belongs to (what generic code asks instead of its
        type)."""
        return family_for(self)

    def parse_arch(self, arch: ArchInput) -> ArchValue:
        return self.space.parse(arch)

    def set_active(self, arch: ArchInput) -> ArchValue:
        """Make ``forward`` run the sub-network ``arch`` (its resolution is whatever
        the input has). Returns the validated :class:`ArchValue`."""
        arch = self.parse_arch(arch)
        self._activate(arch)
        self.active_arch = arch
        return arch

    def set_largest(self) -> ArchValue:
        return self.set_active(self.space.largest())

    def extract(
        self,
        arch: ArchInput | None = None,
        *,
        features_only: bool = False,
        out_indices: Sequence[int] = DEFAULT_OUT_INDICES,
    ) -> nn.Module:
        """An ordinary network holding copies of the active weights of ``arch`` (the
        active arch if omitted). In eval mode it computes what the supernet computes.
        With ``features_only``, the network up to its last feature map, returning the
        maps at the strides ``out_indices`` name (:class:`~.features.FeatureNet`). It
        lies on the supernet's device, in its floating-point type."""
        arch = self.active_arch if arch is None else self.parse_arch(arch)
        weight = next(self.parameters())
        subnet = self.build_subnet(arch).to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            computed = self._computed_weights(arch)
        copy_leading_slices(subnet, self.state_dict(keep_vars=True), computed)
        subnet.train(self.training)
        return features_of(subnet, out_indices) if features_only else subnet

    @torch.no_grad()
    def zero_init_residual(self) -> int:
        """Set the scale of the last BN of every residual branch that adds onto an
        identity shortcut to zero, so each such block starts as the identity; returns
        how many. Training from scratch starts this way (``TrainConfig.zero_init_residual``):
        on a short schedule the full network learns far faster (see docs/benchmarks.md).
        The authors' networks offer the same as ``zero_last_gamma``."""
        norms = self.residual_norms()
        for norm in norms:
            norm.weight.zero_()
        return len(norms)

    def macs(self, arch: ArchInput) -> int:
        """Multiply-accumulates of one forward pass of one image at ``arch``'s resolution."""
        return total_macs(self.layer_costs(self.parse_arch(arch)))

    def params(self, arch: ArchInput) -> int:
        """Trainable parameters of the extracted sub-network."""
        return total_params(self.layer_costs(self.parse_arch(arch)))

    # Implemented by families.
    @abstractmethod
    def _activate(self, arch: ArchValue) -> None:
        """Point the elastic layers at ``arch``'s choices."""

    @abstractmethod
    def build_subnet(self, arch: ArchValue) -> nn.Module:
        """A freshly initialised static network of ``arch``'s shape."""

    @abstractmethod
    def _computed_weights(self, arch: ArchValue) -> dict[str, torch.Tensor]:
        """Extracted tensors that are not leading slices (transformed kernels)."""

    @abstractmethod
    def layer_costs(self, arch: ArchValue) -> list[LayerCost]:
        """One row per conv / linear layer of the sub-network at ``arch.r``."""

    @abstractmethod
    def cost_parts(self, resolution: int) -> CostParts:
        """The layers at ``resolution`` split into fixed parts and per-(slot, k, e)
        blocks; ``layer_costs`` is their sum over an arch's active slots."""

    @abstractmethod
    def residual_norms(self) -> list[nn.BatchNorm2d]:
        """The last BN of each residual branch that adds onto an identity shortcut."""

    @abstractmethod
    def sort_channels(self) -> None:
        """Sort hidden channels by importance without changing the function."""
