"""The authors' specialised sub-networks (``net.config`` JSON + weights) as our exports.

Their model zoo ships each specialised network as a ``net.config`` (the layer-by-layer
JSON their ``MobileNetV3`` / ``ProxylessNASNets`` / ``ResNets`` classes write) and an
``init`` weights file. :func:`subnet_from_net_config` reads the JSON back into an arch of
one of our supernets (kernel size, expand ratio, depth and width per stage are recovered
from the blocks; every layer's channels, stride, activation and SE are checked against
our table), and
:func:`import_reference_subnet` loads the weights by name and writes an ordinary export
directory (safetensors, ONNX checked with onnxruntime, metadata), the same format
``ofa export`` writes. Weights are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from ..deploy.export import ExportResult, write_export
from ..models import all_families, family_for, supernet_config
from ..storage.reading import loads_json, read_text
from .base import NetConfigError, load_mapped, read_state_dict

__all__ = [
    "NetConfigError",
    "import_reference_subnet",
    "load_reference_subnet",
    "subnet_from_net_config",
    "subnet_keys",
]

_DEFAULT_RESOLUTIONS = tuple(range(128, 225, 4))


def _candidates() -> dict[str, tuple[str, ...]]:
    """Their ``net.config`` class name -> our supernets it may come from, over every
    family the authors' package has."""
    found: dict[str, tuple[str, ...]] = {}
    for family in all_families():
        if family.reference is not None:
            found.update(family.reference.net_configs)
    return found


def _supernet_config(net_config: Mapping[str, Any], supernet: str, resolution: int) -> Any:
    """Our config of ``supernet`` with the classes, dropout and BN settings of their
    ``net_config``, and ``resolution`` among its resolutions."""
    classifier = net_config["classifier"]
    bn = net_config.get("bn") or {}
    return supernet_config(
        supernet,
        num_classes=int(classifier["out_features"]),
        dropout=float(classifier.get("dropout_rate") or 0.0),
        bn_eps=float(bn.get("eps") or 1e-5),
        bn_momentum=float(bn.get("momentum") or 0.1),  # None (cumulative) only in calibration
        resolutions=tuple(sorted(set(_DEFAULT_RESOLUTIONS) | {resolution})),
    )


def subnet_from_net_config(
    net_config: Mapping[str, Any] | str | os.PathLike, resolution: int
) -> tuple[str, Any]:
    """(our supernet name, an uninitialised static network) for the authors' specialised
    ``net_config`` (a dict or a path to the JSON) run at ``resolution``. Their JSON does
    not record the input size: their model zoo lists it with each net (``image_size`` in
    its ``run.config``)."""
    source = "net.config"
    if not isinstance(net_config, Mapping):
        path = source = Path(net_config)
        try:
            net_config = loads_json(read_text(path, "net.config"))
        except json.JSONDecodeError as exc:
            raise NetConfigError(f"{path} is not JSON: {exc}") from None
        if not isinstance(net_config, Mapping):
            raise NetConfigError(
                f"{path} holds a JSON {type(net_config).__name__}, not a net.config"
            )
    name = net_config.get("name")
    candidates = _candidates()
    if name not in candidates:
        raise NetConfigError(f"{source} describes a {name!r}; supported: {', '.join(candidates)}")
    failures = []
    for supernet in candidates[name]:
        try:
            config = _supernet_config(net_config, supernet, resolution)
            reader = family_for(config).reference.subnet_from_net_config
            return supernet, reader(net_config, config, supernet, resolution)
        except NetConfigError as exc:
            failures.append(str(exc))
        except (KeyError, TypeError, IndexError) as exc:
            raise NetConfigError(f"net.config lacks or misstates a field: {exc!r}") from None
    raise NetConfigError(
        f"the {name} net.config fits none of our supernets: " + " | ".join(failures)
    )


def subnet_keys(subnet: Any) -> dict[str, str]:
    """Our sub-network's state-dict keys -> their static network's (blocks numbered
    consecutively over the blocks that run)."""
    return family_for(subnet).reference.subnet_keys(subnet)


def load_reference_subnet(
    config_path: str | os.PathLike, weights_path: str | os.PathLike, resolution: int
) -> tuple[str, Any]:
    """Their specialised network as our static network, weights loaded, in eval mode."""
    supernet, subnet = subnet_from_net_config(config_path, resolution)
    theirs = read_state_dict(Path(weights_path))
    load_mapped(
        subnet,
        theirs,
        subnet_keys(subnet),
        f"{weights_path} does not fit the network of {config_path}",
    )
    return supernet, subnet.eval()


def import_reference_subnet(
    config_path: str | os.PathLike,
    weights_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    resolution: int,
    *,
    onnx: bool = True,
    threads: int | None = None,
) -> ExportResult:
    """Write the authors' specialised network as an export directory of ours (loadable
    with :func:`onceforall.deploy.export.load_exported`, ONNX checked). BN statistics are kept
    as they are in the file (no recalibration); accuracy is not measured here."""
    supernet_name, subnet = load_reference_subnet(config_path, weights_path, resolution)
    costs = family_for(subnet).supernet(subnet.config)  # MACs and params of its arch
    return write_export(
        subnet,
        out_dir,
        macs=costs.macs(subnet.arch),
        params=costs.params(subnet.arch),
        supernet_name=supernet_name,
        onnx=onnx,
        threads=threads,
        extra_metadata={
            "source": "reference specialised net",
            "source_files": {"net_config": str(config_path), "weights": str(weights_path)},
        },
    )
