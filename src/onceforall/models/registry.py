"""The registry: the model families and their named supernets.

``create_supernet("ofa_mbv3_w1.0", num_classes=10)`` is the single entry point; a family
registers itself (:func:`~.family.register_family`) and its named variants
(:func:`register_supernet`) here.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Callable, Iterable

from torch import nn

from ..arch import MBConvSpace, ResNetSpace
from ..arch.base import MIN_RESOLUTION, is_int
from ..compat.mbconv import MBCONV_REFERENCE
from ..compat.resnet import RESNET_REFERENCE
from ..errors import ConfigError, UnknownNameError, check_whole_number
from .base import Supernet
from .family import Family, family_for, register_family
from .mbconv import MBConvNetConfig, MBConvSubnet, OFAMBConvNet, proxyless_config
from .resnet import OFAResNet, ResNetConfig, ResNetSubnet

__all__ = [
    "MBCONV",
    "RESNET",
    "build_subnet",
    "create_supernet",
    "list_supernets",
    "register_supernet",
    "supernet_config",
    "supernet_family",
]

MBCONV = register_family(
    Family(
        tag="mbconv",
        supernet=OFAMBConvNet,
        subnet=MBConvSubnet,
        config=MBConvNetConfig,
        space=MBConvSpace,
        additive_costs=True,
        default_preset="imagenet",
        reference=MBCONV_REFERENCE,
        legacy_tags=("mobilenet_v3",),  # exports written by 0.1.0
    )
)
RESNET = register_family(
    Family(
        tag="resnet",
        supernet=OFAResNet,
        subnet=ResNetSubnet,
        config=ResNetConfig,
        space=ResNetSpace,
        additive_costs=False,
        default_preset="imagenet-resnet50",
        reference=RESNET_REFERENCE,
    )
)

# name -> (supernet class, default config)
_REGISTRY: dict[str, tuple[Callable[[Any], Supernet], Any]] = {}


def register_supernet(name: str, factory: Callable[[Any], Supernet], config: Any) -> None:
    """Register a named supernet: ``factory(config)`` builds it."""
    if name in _REGISTRY:
        raise ValueError(f"supernet {name!r} is already registered")
    _REGISTRY[name] = (factory, config)


def list_supernets() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> tuple[Callable[[Any], Supernet], Any]:
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown supernet {name!r}; known: {', '.join(list_supernets())}")
    return _REGISTRY[name]


def supernet_family(name: str) -> Family:
    """The family of the registered supernet ``name``."""
    return family_for(_entry(name)[1])


def supernet_config(name: str, **overrides: Any) -> Any:
    """The config of a registered supernet with ``overrides`` applied (for example
    ``num_classes=10, resolutions=(24, 28, 32)``)."""
    _, config = _entry(name)
    known = {f.name for f in fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"{name} has no setting(s) {', '.join(unknown)}; settings: {', '.join(sorted(known))}"
        )
    if "num_classes" in overrides:
        check_whole_number("num_classes", overrides["num_classes"], 1)
    if "resolutions" in overrides:
        given = overrides["resolutions"]
        sizes = list(given) if isinstance(given, Iterable) and not isinstance(given, str) else []
        if not sizes or not all(is_int(r) and r >= MIN_RESOLUTION for r in sizes):
            raise ConfigError(
                f"{name}: resolutions must be a non-empty list of whole numbers >= "
                f"{MIN_RESOLUTION} (input sizes in pixels), not {given!r}"
            )
        overrides["resolutions"] = sizes
    for key in ("resolutions", "kernel_sizes", "expand_ratios", "depths"):
        if key in overrides:
            kind = float if isinstance(getattr(config, key)[0], float) else int
            overrides[key] = tuple(kind(v) for v in overrides[key])
    return replace(config, **overrides)


def create_supernet(name: str, **overrides: Any) -> Supernet:
    """Build a registered supernet, e.g. ``create_supernet("ofa_mbv3_w1.0", num_classes=10)``.

    Keyword arguments override fields of the family's config dataclass.
    """
    config = supernet_config(name, **overrides)
    factory, _ = _entry(name)
    net = factory(config)
    net.name = name
    return net


def build_subnet(spec: dict[str, Any], arch: Any = None) -> nn.Module:
    """Rebuild a static sub-network from the ``spec()`` of an extracted one (weights are
    not included: load them afterwards)."""
    return family_for(str(spec.get("family"))).build_subnet(spec["config"], arch or spec["arch"])


register_supernet("ofa_mbv3_w1.0", OFAMBConvNet, MBConvNetConfig(width_mult=1.0))
register_supernet("ofa_mbv3_w1.2", OFAMBConvNet, MBConvNetConfig(width_mult=1.2))
register_supernet("ofa_proxyless_w1.3", OFAMBConvNet, proxyless_config(width_mult=1.3))
register_supernet("ofa_resnet50", OFAResNet, ResNetConfig())
