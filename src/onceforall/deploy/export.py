"""Export a specialised sub-network as an ordinary model (the folder's files and
loading it back: :mod:`onceforall.storage.export_folder`, whose ``load_exported`` is
re-exported here).

An export is all or nothing. The files are written into a hidden folder beside the
export and swapped in as a whole (:func:`~onceforall.storage.atomic.atomic_directory`),
so a killed export leaves the previous complete export (or nothing) and no temporary
files inside it; leftovers beside it are cleared by the next export to the same place.
One process at a time exports into a folder (a lock beside it). ``metadata.json``
records the SHA-256 of every other file, and :func:`load_exported` requires it and checks
them all before it builds anything. Loading reads JSON and safetensors only: nothing from
the directory is unpickled or executed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, Union

import torch
from torch import nn

from ..arch import ArchInput, ArchValue
from ..evaluation import evaluate, recalibrate_bn
from ..latency.backends import QuantizedBackend, get_backend
from ..latency.measure import device_description, measure_latency
from ..models import Supernet
from ..storage.atomic import atomic_directory, remove_stale_directories
from ..storage.export_folder import (
    ARCH,
    FORMAT,
    FORMAT_VERSION,
    METADATA,
    ONNX,
    SPEC,
    WEIGHTS,
    is_export,
    json_bytes,
    load_exported,
    sha256,
)
from ..storage.onnx_export import (
    ExportError,
    MissingDependencyError,
    export_and_check_onnx,
    require,
)
from ..storage.run_guard import lock_beside
from .quantized import MIN_AGREEMENT, Int8Images, write_int8
from .runtime_files import runtime_record, write_litert, write_openvino

# FP32 model files other than model.onnx, by backend (INT8 ones: deploy.quantized).
_FP32_WRITERS = {"openvino": write_openvino, "litert": write_litert}

__all__ = [
    "ExportError",
    "ExportResult",
    "MissingDependencyError",
    "export_subnet",
    "load_exported",
    "write_export",
]

PathLike = Union[str, "os.PathLike[str]"]

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
    runtimes: Sequence[str] = (),
    int8_min_agreement: float = MIN_AGREEMENT,
) -> ExportResult:
    """Extract ``arch`` from ``supernet``, recalibrate its BN statistics on
    ``n_calibration`` images of ``calibration_loader``, evaluate it on ``test_loader``
    (if given), time it on this CPU (torch eager, batch 1, ``threads`` intra-op threads)
    and write it to ``out_dir`` (see the module docstring for the files).

    Both loaders must yield images at ``arch``'s resolution. With ``onnx`` the ONNX model
    is run with onnxruntime and compared with PyTorch before it is kept; a mismatch raises
    :class:`ExportError` and leaves no ``model.onnx``. ``runtimes`` names the other
    backends to write model files for (:func:`write_export`); INT8 ones are calibrated
    and checked on ``calibration_loader``'s held-out images.
    ``extra_metadata`` (e.g. ``{"source_run": "runs/fmnist"}``) is merged into
    ``metadata.json``.
    """
    _check_inputs(out_dir, onnx, extra_metadata)  # before the expensive steps
    arch = supernet.parse_arch(arch)
    counted = [0]

    def calibration_batches() -> Iterator:
        for batch in _at_resolution(calibration_loader, arch.r, "calibration_loader"):
            counted[0] += len(batch[0] if isinstance(batch, (tuple, list)) else batch)
            yield batch

    with lock_beside(out_dir):  # a second export into out_dir is refused at once
        subnet = recalibrate_bn(supernet, arch, calibration_batches(), n_calibration).eval()
        accuracy = None
        if test_loader is not None:
            accuracy = evaluate(subnet, _at_resolution(test_loader, arch.r, "test_loader"))
        held_out = _FirstImages(calibration_loader, n_calibration)
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
            runtimes=runtimes,
            int8_images=Int8Images(held_out, test_loader, int8_min_agreement),
            runtime_test=test_loader,
        )


class _FirstImages:
    """The first ``n`` images of ``loader``'s batches, read anew each time it is iterated
    (each INT8 model of an export calibrates and checks on them)."""

    def __init__(self, loader: Iterable, n: int) -> None:
        self.loader, self.n = loader, n

    def __iter__(self) -> Iterator[torch.Tensor]:
        left = self.n
        for batch in self.loader:
            if left <= 0:
                return
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            yield images[:left]
            left -= len(images)


def check_export_target(out_dir: PathLike) -> None:
    """Refuse an ``out_dir`` that an export may not replace: a file, or a folder holding
    anything but an export (replacing it would delete the files)."""
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder} is a file; an export is a folder: choose another --out")
    if folder.is_dir() and any(folder.iterdir()) and not is_export(folder):
        raise ExportError(
            f"{folder} is not empty and is not an export (no {METADATA} of one): an export "
            "replaces its folder as a whole, so choose a new or empty folder"
        )


def _check_inputs(
    out_dir: PathLike, onnx: bool, extra_metadata: Mapping[str, Any] | None
) -> tuple[Any, dict]:
    """The safetensors module and ``extra_metadata`` as a dict, or a clear error when
    ``out_dir`` may not be written, an optional package is missing or the metadata cannot
    be written as JSON."""
    check_export_target(out_dir)
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
    runtimes: Sequence[str] = (),
    int8_images: Int8Images | None = None,
    runtime_test: Iterable | None = None,
) -> ExportResult:
    """Write a finished static sub-network (one with ``arch`` and ``spec()``, its BN
    statistics final) to ``out_dir``: time it on this CPU, then write the files of the
    module docstring atomically. ``accuracy`` is :func:`evaluate`'s result, if measured.
    Used by :func:`export_subnet` and by the import of the authors' specialised nets.

    Besides ``model.onnx`` (ONNX Runtime), the model files of the backends in
    ``runtimes`` are written: ``openvino`` (OpenVINO's IR, from the ONNX export),
    ``litert`` (``model.tflite``, from the module), each checked against PyTorch, and the
    INT8 backends (``onnxruntime-int8``, ``openvino-int8``, ``litert-int8``: each
    runtime's own quantizer, quantized and checked on ``int8_images`` as
    :func:`~onceforall.deploy.quantized.write_int8` says). Each file is timed on this
    CPU and, given ``runtime_test`` batches, evaluated on them; ``metadata.json`` records
    per file its backend, runtime, precision, latency and test top-1 (``runtimes``)."""
    extra_runtimes = [get_backend(name) for name in runtimes if name != "onnxruntime"]
    if extra_runtimes and not onnx:
        raise ValueError("the runtimes' model files are made from the ONNX export: keep onnx")
    for runtime in extra_runtimes:
        if isinstance(runtime, QuantizedBackend) and int8_images is None:
            raise ValueError(f"{runtime.name} needs int8_images (calibration and check)")
        if not isinstance(runtime, QuantizedBackend) and runtime.name not in _FP32_WRITERS:
            raise ValueError(f"an export has no model file for the {runtime.name} backend")
    safetensors_torch, extra = _check_inputs(out_dir, onnx, extra_metadata)
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
        SPEC: json_bytes(spec),
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
        "runtimes": {},
    }
    reserved = (set(metadata) | {"files"}) - {"source_run"}
    clashes = sorted(k for k in extra if k in reserved)
    if clashes:
        raise ValueError(f"extra_metadata may not overwrite {', '.join(clashes)}")
    metadata.update(extra)

    with lock_beside(out_dir):
        remove_stale_directories(out_dir)  # what killed exports to out_dir left
        with atomic_directory(out_dir) as folder:
            if onnx:
                metadata["onnx"] = export_and_check_onnx(subnet, arch.r, folder / ONNX, threads)
                files[ONNX] = (folder / ONNX).read_bytes()
                metadata["runtimes"][ONNX] = runtime_record(
                    folder / ONNX, "onnxruntime", arch.r, runtime_test, threads
                )
            for runtime in extra_runtimes:
                if isinstance(runtime, QuantizedBackend):
                    written, record = write_int8(
                        subnet, folder / ONNX, folder, int8_images, backend=runtime, threads=threads
                    )
                else:
                    written, record = _FP32_WRITERS[runtime.name](
                        subnet, folder / ONNX, folder, arch.r, runtime_test, threads
                    )
                metadata["runtimes"][written[0].name] = record
                files.update((path.name, path.read_bytes()) for path in written)
            metadata["files"] = {
                name: {"sha256": sha256(data), "bytes": len(data)} for name, data in files.items()
            }
            for name in (WEIGHTS, ARCH, SPEC):
                (folder / name).write_bytes(files[name])
            (folder / METADATA).write_bytes(json_bytes(metadata))

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
