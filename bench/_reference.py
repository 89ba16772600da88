"""Thin adapters over the authors' ``ofa`` package, for side-by-side benchmarks.

Nothing here is needed by ``onceforall`` itself. Every function returns ``None`` when the
``ofa`` package (the ``reference`` extra in pyproject.toml) cannot be imported, so a
benchmark can call these unconditionally and simply skip the reference column.

Checked against ofa==0.1.0.post202307202001 with torch 2.14.1 (CPU). Nothing here downloads
weights: the supernet is built with random initialisation.

Facts about the reference that these adapters rely on:

* ``OFAMobileNetV3`` lives in ``ofa.imagenet_classification.elastic_nn.networks``.
* ``DynamicSeparableConv2d.KERNEL_TRANSFORM_MODE`` is a class attribute (default 1). It is
  read when the supernet is constructed (to register the ``7to5_matrix`` / ``5to3_matrix``
  parameters) and again on every forward, so it must be 1 both at build time and at run time.
* ``DynamicBatchNorm2d.SET_RUNNING_STATISTICS`` is a class attribute that only the authors'
  BN-recalibration helper toggles; it must be ``False`` for training and inference.
* ``sample_active_subnet`` draws from Python's global :mod:`random` state, not torch's.
* Their hook-based FLOP counter only sees ``nn.Conv2d``/``nn.Linear`` modules that are
  actually called, and the supernet's dynamic ops call ``F.conv2d`` directly, so on the
  supernet it misses every elastic block. :func:`reference_macs` therefore counts from the
  active-net config (their ``MBv3LatencyTable.count_flops_given_config``), which gives the
  same number as hooking the extracted sub-network.
"""

from __future__ import annotations

import random
from typing import Any, Mapping

import torch
import torch.nn as nn

__all__ = [
    "REFERENCE_IMPORT_ERROR",
    "reference_available",
    "reference_version",
    "build_reference_mbv3",
    "reference_set_arch",
    "reference_sample",
    "reference_set_largest",
    "reference_extract",
    "reference_macs",
    "reference_macs_by_hooks",
    "reference_params",
]

# Why the reference could not be imported (None when it could, or before the first try).
REFERENCE_IMPORT_ERROR: str | None = None
_OFA: dict | None = None
_TRIED = False


def _load() -> dict | None:
    """Import the pieces of ``ofa`` used here once; None if the package is unusable."""
    global _OFA, _TRIED, REFERENCE_IMPORT_ERROR
    if _TRIED:
        return _OFA
    _TRIED = True
    try:
        from ofa.imagenet_classification.elastic_nn.modules.dynamic_op import (
            DynamicBatchNorm2d,
            DynamicSeparableConv2d,
        )
        from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3
        from ofa.imagenet_classification.networks import MobileNetV3
        from ofa.nas.efficiency_predictor.latency_lookup_table import MBv3LatencyTable
        from ofa.utils import count_net_flops, init_models
    except Exception as exc:  # ImportError, or a dependency that ofa imports undeclared
        REFERENCE_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
        _OFA = None
        return None
    _OFA = {
        "OFAMobileNetV3": OFAMobileNetV3,
        "MobileNetV3": MobileNetV3,
        "DynamicSeparableConv2d": DynamicSeparableConv2d,
        "DynamicBatchNorm2d": DynamicBatchNorm2d,
        "MBv3LatencyTable": MBv3LatencyTable,
        "count_net_flops": count_net_flops,
        "init_models": init_models,
    }
    return _OFA


def reference_available() -> bool:
    return _load() is not None


def reference_version() -> str | None:
    """Installed distribution version of ``ofa`` (e.g. '0.1.0.post202307202001')."""
    if _load() is None:
        return None
    try:
        from importlib.metadata import version

        return version("ofa")
    except Exception:
        return "unknown"


def build_reference_mbv3(
    width_mult: float = 1.0,
    num_classes: int = 1000,
    seed: int | None = 0,
    *,
    ks_list=(3, 5, 7),
    expand_ratio_list=(3, 4, 6),
    depth_list=(2, 3, 4),
    dropout_rate: float = 0.1,
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-5,
    he_fout_init: bool = False,
) -> nn.Module | None:
    """The authors' OFA-MobileNetV3 supernet with random weights, or None without ``ofa``.

    ``seed`` (when not None) seeds both torch (weight init) and Python's ``random`` (which the
    reference sampler uses). ``he_fout_init`` applies the authors' ``init_models(net,
    "he_fout")``, which their training run applies; otherwise PyTorch default init is kept.
    The supernet comes back in training mode and set to its largest sub-network.
    """
    ofa = _load()
    if ofa is None:
        return None
    if seed is not None:
        torch.manual_seed(seed)
        random.seed(seed)
    # The kernel-transform matrices are only registered when this flag is set at build time.
    ofa["DynamicSeparableConv2d"].KERNEL_TRANSFORM_MODE = 1
    ofa["DynamicBatchNorm2d"].SET_RUNNING_STATISTICS = False
    net = ofa["OFAMobileNetV3"](
        n_classes=num_classes,
        bn_param=(bn_momentum, bn_eps),
        dropout_rate=dropout_rate,
        width_mult=width_mult,
        ks_list=list(ks_list),
        expand_ratio_list=list(expand_ratio_list),
        depth_list=list(depth_list),
    )
    if he_fout_init:
        ofa["init_models"](net, "he_fout")
    net.set_max_net()
    return net


def _as_dict(arch: Any) -> Mapping[str, Any]:
    if hasattr(arch, "to_dict"):  # onceforall.arch.Arch and similar values
        return arch.to_dict()
    return arch


def _resolution(arch: Mapping[str, Any]) -> int | None:
    r = arch.get("r")
    if r is None:
        return None
    if isinstance(r, (list, tuple)):
        return int(r[0]) if len(r) else None
    return int(r)


def reference_set_arch(net: nn.Module | None, arch: Any) -> int | None:
    """Activate ``arch`` ({"ks": [20], "e": [20], "d": [5], optional "r"}) on the supernet.

    Returns the resolution the arch names (``r`` as an int or one-element list), else None.
    The reference has no notion of resolution inside the net; the caller sizes its inputs.
    """
    if net is None or _load() is None:
        return None
    arch = _as_dict(arch)
    net.set_active_subnet(ks=list(arch["ks"]), e=list(arch["e"]), d=list(arch["d"]))
    return _resolution(arch)


def reference_sample(net: nn.Module | None, seed: int | None = None) -> dict | None:
    """Activate a random sub-network with the reference sampler; return its arch dict.

    The dict has "ks" (20), "e" (20), "d" (5) and no "r". ks/e are drawn for every slot,
    including slots the sampled depth skips. Uses Python's global ``random``; ``seed``, when
    given, reseeds it first.
    """
    if net is None or _load() is None:
        return None
    if seed is not None:
        random.seed(seed)
    arch = net.sample_active_subnet()
    return {key: list(value) for key, value in arch.items()}


def reference_set_largest(net: nn.Module | None) -> None:
    """Activate the largest sub-network (max kernel, expand ratio and depth everywhere)."""
    if net is None or _load() is None:
        return None
    net.set_max_net()
    return None


def reference_extract(net: nn.Module | None) -> nn.Module | None:
    """A standalone static ``MobileNetV3`` of the active sub-network, weights copied
    (kernel transforms applied, BN statistics sliced). Block keys are renumbered
    contiguously and lose the dynamic wrappers (``.conv.conv.`` -> ``.conv.``)."""
    if net is None or _load() is None:
        return None
    return net.get_active_subnet(preserve_weight=True)


def reference_macs(net: nn.Module | None, resolution: int = 224) -> int | None:
    """Multiply-accumulates of one image at ``resolution``, by the authors' own rule.

    Works on the supernet (its active sub-network) or on an extracted ``MobileNetV3``. Counts
    every conv (first conv, expand 1x1, depthwise kxk, SE reduce/expand at 1x1, projection 1x1,
    final expand, feature mix) and the classifier as in*out*k*k*H_out*W_out/groups; no BN,
    activations, pooling, SE rescaling, residual adds or biases. The authors call these
    "FLOPs" and report them in millions.
    """
    ofa = _load()
    if net is None or ofa is None:
        return None
    if isinstance(net, ofa["OFAMobileNetV3"]):
        config = net.get_active_net_config()
    else:
        config = net.config
    mflops = ofa["MBv3LatencyTable"].count_flops_given_config(config, int(resolution))
    return int(round(mflops * 1e6))


def reference_macs_by_hooks(net: nn.Module | None, resolution: int = 224) -> int | None:
    """The same count through the authors' hook-based ``count_net_flops`` (their
    ``get_net_info`` path). Extracts first when given the supernet, since hooks cannot see the
    dynamic ops. Accumulates in float32, so can be off by a few tens at ~5e8."""
    ofa = _load()
    if net is None or ofa is None:
        return None
    if isinstance(net, ofa["OFAMobileNetV3"]):
        net = net.get_active_subnet(preserve_weight=False)
    r = int(resolution)
    return int(round(ofa["count_net_flops"](net, (1, 3, r, r))))


def reference_params(net: nn.Module | None, active: bool = True) -> int | None:
    """Trainable parameter count. For the supernet with ``active=True``: of the extracted
    active sub-network; with ``active=False``: of the whole supernet, kernel-transform
    matrices included."""
    ofa = _load()
    if net is None or ofa is None:
        return None
    if active and isinstance(net, ofa["OFAMobileNetV3"]):
        net = net.get_active_subnet(preserve_weight=False)
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
