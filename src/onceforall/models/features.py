"""Multi-scale feature maps of a sub-network, for detection and segmentation backbones.

``supernet.extract(arch, features_only=True)`` and ``load_exported(path,
features_only=True)`` return a :class:`FeatureNet`: the sub-network up to its last
feature map, whose forward returns the maps at strides 4, 8, 16 and 32 (``out_indices``
into strides 2, 4, 8, 16, 32, as timm's ``features_only`` models count them), with a
:class:`FeatureInfo` that gives each output's channels and reduction.

Its children are the network's own modules in the order they run (a family's static
network lists them: ``feature_body()``), so torchvision's ``IntermediateLayerGetter``
and ``BackboneWithFPN`` take it as it is::

    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    body = supernet.extract(arch, features_only=True)
    backbone = BackboneWithFPN(
        body, body.feature_info.return_layers(), body.feature_info.channels(), 256
    )
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["FeatureInfo", "FeatureNet", "features_of"]

DEFAULT_OUT_INDICES = (1, 2, 3, 4)  # strides 4, 8, 16, 32
_PROBE = 256  # probe input size: every stride up to 256 divides it


class FeatureInfo:
    """What each output of a :class:`FeatureNet` is: ``num_chs``, ``reduction`` (its
    stride) and ``module`` (the child whose output it is), as timm's ``feature_info``."""

    def __init__(self, info: list[dict[str, Any]]) -> None:
        self.info = info

    def channels(self) -> list[int]:
        return [i["num_chs"] for i in self.info]

    def reduction(self) -> list[int]:
        return [i["reduction"] for i in self.info]

    def module_name(self) -> list[str]:
        return [i["module"] for i in self.info]

    def return_layers(self) -> dict[str, str]:
        """The ``return_layers`` of torchvision's ``IntermediateLayerGetter`` /
        ``BackboneWithFPN``: child name -> output name ("0", "1", ...)."""
        return {name: str(i) for i, name in enumerate(self.module_name())}

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo({self.info})"


class FeatureNet(nn.Module):
    """A network's modules up to its last requested feature map; ``forward`` returns the
    feature maps, shallowest first."""

    def __init__(
        self,
        body: Sequence[tuple[str, nn.Module]],
        out_indices: Sequence[int] = DEFAULT_OUT_INDICES,
    ) -> None:
        super().__init__()
        levels = _levels(body)  # per stride 2, 4, 8, ...: (child index, channels, reduction)
        out_indices = tuple(out_indices)
        bad = [i for i in out_indices if not isinstance(i, int) or not 0 <= i < len(levels)]
        if bad or not out_indices or len(set(out_indices)) < len(out_indices):
            strides = ", ".join(f"{i} (stride {lv[2]})" for i, lv in enumerate(levels))
            raise ConfigError(
                f"out_indices {list(out_indices)}: each must be one of {strides}, at most once"
            )
        out_indices = tuple(sorted(out_indices))
        last = max(levels[i][0] for i in out_indices)
        for name, module in body[: last + 1]:
            self.add_module(name, module)
        self.out_indices = out_indices
        info = []
        for i in out_indices:
            child, channels, stride = levels[i]
            info.append({"num_chs": channels, "reduction": stride, "module": body[child][0]})
        self.feature_info = FeatureInfo(info)
        self._taps = frozenset(self.feature_info.module_name())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for name, module in self.named_children():
            x = module(x)
            if name in self._taps:
                features.append(x)
        return features


def features_of(network: nn.Module, out_indices: Sequence[int] = DEFAULT_OUT_INDICES) -> FeatureNet:
    """The :class:`FeatureNet` of a static network of any family (it shares the
    network's modules and weights, and its train or eval mode)."""
    body = getattr(network, "feature_body", None)
    if body is None:
        raise TypeError(f"{type(network).__name__} does not list its feature modules")
    features = FeatureNet(body(), out_indices)
    return features.train(network.training)


@torch.no_grad()
def _levels(body: Sequence[tuple[str, nn.Module]]) -> list[tuple[int, int, int]]:
    """For each stride 2, 4, 8, ... the body reaches: the index of the last child with
    that output stride, its channels and the stride (found by running a probe image in
    eval mode; the modes are restored)."""
    modes = [m.training for _, m in body]
    x = torch.zeros(1, 3, _PROBE, _PROBE)
    found: dict[int, tuple[int, int, int]] = {}
    try:
        for i, (_, module) in enumerate(body):
            x = module.eval()(x)
            stride = _PROBE // x.shape[-1]
            found[stride] = (i, x.shape[1], stride)
    finally:
        for (_, module), mode in zip(body, modes):
            module.train(mode)
    strides = sorted(found)
    expected = [2 ** (i + 1) for i in range(len(strides))]
    if strides != expected:
        raise ValueError(f"feature strides {strides}: expected {expected}")
    return [found[s] for s in strides]
