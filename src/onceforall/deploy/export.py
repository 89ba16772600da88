"""Export a specialised sub-network as an ordinary model, and load it back without the
supernet.

An export directory holds::

    model.safetensors  weights (state dict; the spec is repeated in its header metadata)
    arch.json          the arch in the authors' format ({"ks", "e", "d", "r": [r]})
    spec.json          family + config + arch: enough to rebuild the network's modules
    model.onnx         the same network for onnxruntime (checked against PyTorch first)
    metadata.json      accuracy, MACs, params, latency and its device, versions, hashes

Every file is written to a temporary name, fsync-ed and renamed, so an interrupted export
never leaves a half-written file; ``metadata.json`` is written last and records the
SHA-256 of the others, so a directory with it is a complete export. Loading reads JSON
and safetensors only: nothing from the directory is unpickled or executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Union

import torch
from torch import nn

from ..arch import ArchInput, ArchValue
from ..errors import InputNotFoundError
from ..evaluation import evaluate, recalibrate_bn
from ..latency.measure import device_description, measure_latency
from ..models import Supernet, build_subnet
from ..storage.atomic import fsync_directory, temporary_name, write_bytes_atomic
from ..storage.onnx_export import (
    ExportError,
    MissingDependencyError,
    export_and_check_onnx,
    require,
)
from ..storage.state_dicts import state_dict_problems

__all__ = [
    "ExportError",
    "ExportResult",
    "MissingDependencyError",
    "export_subnet",
    "load_exported",
    "write_export",
]

PathLike = Union[str, "os.PathLike[str]"]

WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
ARCH = "arch.json"
SPEC = "spec.json"
METADATA = "metadata.json"
FORMAT = "onceforall-subnet"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- writing


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportResult:
    """Where an export was written and what was measured."""

    out_dir: Path
    weights_path: Path
    arch_path: Path
    spec_path: Path
    metadata_path: Path
    onnx_path: Path | None
    arch: ArchValue
    top1: float | None
    macs: int
    params: int
    latency_ms: float
    metadata: dict[str, Any]


def _at_resolution(loader: Iterable, resolution: int, what: str) -> Iterator:
    """Yield ``loader``'s batches, refusing images not at the arch's resolution (BN
    statistics or accuracy at another resolution would be silently wrong)."""
    for batch in loader:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if tuple(images.shape[-2:]) != (resolution, resolution):
            height, width = images.shape[-2:]
            raise ValueError(
                f"{what} yields {height}x{width} images but the arch runs at "
                f"{resolution}x{resolution}; build it with make_loader(..., "
                f"resolutions=[{resolution}])"
            )
        yield batch


def export_subnet(
    supernet: Supernet,
    arch: ArchInput,
    out_dir: PathLike,
    *,
    calibration_loader: Iterable,
    test_loader: Iterable | None = None,
    n_calibration: int = 2000,
    onnx: bool = True,
    latency_resolution: int | None = None,
    threads: int | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Extract ``arch`` from ``supernet``, recalibrate its BN statistics on
    ``n_calibration`` images of ``calibration_loader``, evaluate it on ``test_loader``
    (if given), time it on this CPU (torch eager, batch 1, ``threads`` intra-op threads)
    and write it to ``out_dir`` (see the module docstring for the files).

    Both loaders must yield images at ``arch``'s resolution. With ``onnx`` the ONNX model
    is run with onnxruntime and compared with PyTorch before it is kept; a mismatch raises
    :class:`ExportError` and leaves no ``model.onnx``. ``extra_metadata`` (e.g.
    ``{"source_run": "runs/fmnist"}``) is merged into ``metadata.json``.
    """
    _check_inputs(onnx, extra_metadata)  # before the expensive steps
    arch = supernet.parse_arch(arch)
    counted = [0]

    def calibration_batches() -> Iterator:
        for batch in _at_resolution(calibration_loader, arch.r, "calibration_loader"):
            counted[0] += len(batch[0] if isinstance(batch, (tuple, list)) else batch)
            yield batch

    subnet = recalibrate_bn(supernet, arch, calibration_batches(), n_calibration).eval()
    accuracy = None
    if test_loader is not None:
        accuracy = evaluate(subnet, _at_resolution(test_loader, arch.r, "test_loader"))
    return write_export(
        subnet,
        out_dir,
        macs=supernet.macs(arch),
        params=supernet.params(arch),
        supernet_name=getattr(supernet, "name", type(supernet).__name__),
        accuracy=accuracy,
        bn_calibration_images=min(counted[0], n_calibration),
        onnx=onnx,
        latency_resolution=latency_resolution,
        threads=threads,
        extra_metadata=extra_metadata,
    )


def _check_inputs(onnx: bool, extra_metadata: Mapping[str, Any] | None) -> tuple[Any, dict]:
    """The safetensors module and ``extra_metadata`` as a dict, or a clear error when an
    optional package is missing or the metadata cannot be written as JSON."""
    safetensors_torch = require("safetensors.torch", "saving the weights")
    if onnx:
        require("onnx", "ONNX export")
        require("onnxruntime", "checking the ONNX export")
    extra = dict(extra_metadata or {})
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"extra_metadata must be JSON-serialisable: {exc}") from None
    return safetensors_torch, extra


def write_export(
    subnet: nn.Module,
    out_dir: PathLike,
    *,
    macs: int,
    params: int,
    supernet_name: str,
    accuracy: Mapping[str, Any] | None = None,
    bn_calibration_images: int | None = None,
    onnx: bool = True,
    latency_resolution: int | None = None,
    threads: int | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Write a finished static sub-network (one with ``arch`` and ``spec()``, its BN
    statistics final) to ``out_dir``: time it on this CPU, then write the files of the
    module docstring atomically. ``accuracy`` is :func:`evaluate`'s result, if measured.
    Used by :func:`export_subnet` and by the import of the authors' specialised nets."""
    safetensors_torch, extra = _check_inputs(onnx, extra_metadata)
    subnet = subnet.eval()
    arch: ArchValue = subnet.arch
    out_dir = Path(out_dir)
    resolution = latency_resolution or arch.r
    latency = measure_latency(subnet, resolution, batch_size=1, threads=threads)
    spec = subnet.spec()
    tensors = {k: v.detach().cpu().contiguous() for k, v in subnet.state_dict().items()}
    weights = safetensors_torch.save(
        tensors, metadata={"format": "pt", "onceforall_spec": json.dumps(spec)}
    )
    files = {
        WEIGHTS: weights,
        ARCH: (arch.to_json() + "\n").encode(),
        SPEC: _json_bytes(spec),
    }

    metadata: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "family": spec["family"],
        "supernet": supernet_name,
        "source_run": None,
        "arch": arch.to_dict(),
        "resolution": arch.r,
        "top1": None if accuracy is None else accuracy["top1"],
        "test_loss": None if accuracy is None else accuracy["loss"],
        "test_images": None if accuracy is None else accuracy["images"],
        "bn_calibration_images": bn_calibration_images,
        "macs": int(macs),
        "params": int(params),
        "latency_ms": latency.median_ms,
        "latency": {
            **asdict(latency),  # median/p10/p90 ms, repeats, batch size, device, threads
            "resolution": resolution,
            "device_description": device_description(latency.device),
        },
        "torch_version": torch.__version__,
        "onnx": None,
    }
    reserved = (set(metadata) | {"files"}) - {"source_run"}
    clashes = sorted(k for k in extra if k in reserved)
    if clashes:
        raise ValueError(f"extra_metadata may not overwrite {', '.join(clashes)}")
    metadata.update(extra)

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_temp = temporary_name(out_dir / ONNX) if onnx else None
    try:
        if onnx_temp is not None:
            metadata["onnx"] = export_and_check_onnx(subnet, arch.r, onnx_temp, threads)
            files[ONNX] = onnx_temp.read_bytes()
        # The directory no longer describes a complete export until metadata.json is back.
        for name in (METADATA, ONNX):
            (out_dir / name).unlink(missing_ok=True)
        metadata["files"] = {
            name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in files.items()
        }
        for name in (WEIGHTS, ARCH, SPEC):
            write_bytes_atomic(out_dir / name, files[name])
        if onnx_temp is not None:
            with open(onnx_temp, "rb+") as file:
                os.fsync(file.fileno())
            os.replace(onnx_temp, out_dir / ONNX)
        write_bytes_atomic(out_dir / METADATA, _json_bytes(metadata))
        fsync_directory(out_dir)
    finally:
        if onnx_temp is not None:
            onnx_temp.unlink(missing_ok=True)

    return ExportResult(
        out_dir=out_dir,
        weights_path=out_dir / WEIGHTS,
        arch_path=out_dir / ARCH,
        spec_path=out_dir / SPEC,
        metadata_path=out_dir / METADATA,
        onnx_path=out_dir / ONNX if onnx else None,
        arch=arch,
        top1=metadata["top1"],
        macs=metadata["macs"],
        params=metadata["params"],
        latency_ms=latency.median_ms,
        metadata=metadata,
    )


# ----------------------------------------------------------------------------- loading


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} is not readable JSON: {exc}") from exc


def _header_spec(data: bytes) -> dict[str, Any] | None:
    """The spec stored in a safetensors header's metadata by :func:`export_subnet`."""
    try:
        (length,) = struct.unpack_from("<Q", data)
        header = json.loads(data[8 : 8 + length])
        return json.loads(header["__metadata__"]["onceforall_spec"])
    except (struct.error, ValueError, KeyError, TypeError):
        return None


def _load_weights(net: nn.Module, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """``net.load_state_dict(tensors)``, with an error naming every mismatch."""

    expected = {k: v.shape for k, v in net.state_dict().items()}
    problems = state_dict_problems(expected, tensors)
    if problems:
        raise ExportError(
            f"{path} does not fit the network described by its spec: " + "; ".join(problems)
        )
    net.load_state_dict(dict(tensors))


def load_exported(path: PathLike) -> nn.Module:
    """The exported network in eval mode, rebuilt from ``spec.json`` (or, without it, the
    spec in the weights file's header) and ``model.safetensors``; ``path`` is the export
    directory or a file in it. Needs no supernet and executes nothing from
    the files. Where ``metadata.json`` records hashes, the weights are verified first.
    """
    path = Path(path)
    directory = path.parent if path.suffix == ".safetensors" or path.is_file() else path
    weights_path = path if path.suffix == ".safetensors" else directory / WEIGHTS
    if not directory.is_dir():
        raise InputNotFoundError(f"{directory} is not a directory (expected an export directory)")
    if not weights_path.is_file():
        raise InputNotFoundError(
            f"{weights_path} not found: an exported sub-network needs its weights "
            f"({WEIGHTS}) and {SPEC}"
        )
    safetensors_torch = require("safetensors.torch", "loading the weights")
    data = weights_path.read_bytes()

    metadata_path = directory / METADATA
    if metadata_path.is_file():
        files = _read_json(metadata_path)
        files = files.get("files") if isinstance(files, dict) else None
        recorded = files.get(weights_path.name) if isinstance(files, dict) else None
        if isinstance(recorded, dict) and recorded.get("sha256") != _sha256(data):
            raise ExportError(
                f"{weights_path} is corrupted: its SHA-256 is {_sha256(data)[:16]}..., "
                f"{METADATA} records {str(recorded.get('sha256'))[:16]}... "
                f"({len(data)} bytes, recorded {recorded.get('bytes')})"
            )
    try:
        tensors = safetensors_torch.load(data)
    except Exception as exc:  # SafetensorError and friends: truncated, garbled header
        raise ExportError(
            f"{weights_path} is not a readable safetensors file (corrupted or truncated?): {exc}"
        ) from exc

    spec_path = directory / SPEC
    if spec_path.is_file():
        spec = _read_json(spec_path)
    else:
        spec = _header_spec(data)
        if spec is None:
            raise InputNotFoundError(
                f"{spec_path} not found and {weights_path.name} carries no spec in its "
                "header: cannot tell which network the weights belong to"
            )
    try:
        net = build_subnet(spec)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ExportError(f"cannot rebuild the network from {spec_path}: {exc}") from exc
    arch_path = directory / ARCH
    space = getattr(getattr(net, "config", None), "space", None)
    if arch_path.is_file() and space is not None:
        try:
            written = space.canonical(_read_json(arch_path))
        except ValueError as exc:
            raise ExportError(f"{arch_path}: {exc}") from exc
        if written != space.canonical(net.arch):
            raise ExportError(f"{arch_path} describes another arch than {SPEC}: {written}")
    _load_weights(net, tensors, weights_path)
    return net.eval()
