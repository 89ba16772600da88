"""The model files an export holds for the runtimes it ships to, besides the safetensors
weights, and what ``metadata.json`` records of each: runtime, precision, versions,
batch-1 latency on this CPU and the file's own test top-1.

``model.onnx`` (ONNX Runtime) is written and checked by
:func:`~onceforall.storage.onnx_export.export_and_check_onnx`; OpenVINO's IR is converted
from it here and LiteRT's ``model.tflite`` from the PyTorch module, each checked the same
way (logits within a relative tolerance of PyTorch's); INT8 files are :mod:`.quantized`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..latency.backends import Backend, get_backend
from ..latency.backends.litert import TFLITE, convert_tflite
from ..latency.backends.openvino import cpu_config, save_ir
from ..latency.measure import backend_versions, measure_latency
from ..storage.onnx_export import ExportError

__all__ = [
    "OPENVINO_BIN",
    "OPENVINO_XML",
    "TFLITE",
    "runtime_record",
    "top1_of",
    "write_litert",
    "write_openvino",
]

OPENVINO_XML, OPENVINO_BIN = "model.xml", "model.bin"
_RTOL = 1e-4  # allowed max |runtime - torch|, relative to max(1, max |logits|): as ONNX's

Predict = Callable[[np.ndarray], np.ndarray]


def top1_of(predict: Predict, batches: Iterable) -> float:
    """Top-1 (percent) of ``predict`` over ``(images, labels)`` batches."""
    correct = seen = 0
    for images, labels in ((b[0], b[1]) for b in batches):
        logits = predict(images.float().cpu().numpy())
        correct += int((logits.argmax(1) == labels.cpu().numpy()).sum())
        seen += len(labels)
    return 100.0 * correct / max(seen, 1)


def runtime_record(
    path: Path,
    backend: str | Backend,
    resolution: int,
    test: Iterable | None,
    threads: int | None,
    predict: Predict | None = None,
) -> dict[str, Any]:
    """What ``metadata.json`` records of the model file at ``path`` for ``backend``:
    runtime, precision, versions, batch-1 latency on this CPU and its own top-1 over
    ``test`` (None: not measured)."""
    runtime = get_backend(backend)
    predict = predict or runtime.load_file(path, threads)
    latency = measure_latency(path, resolution, backend=backend, threads=threads)
    return {
        "backend": runtime.name,
        "runtime": runtime.runtime,
        "precision": runtime.precision,
        "versions": backend_versions(backend),
        "latency_ms": latency.median_ms,
        "latency_threads": latency.threads,
        "top1": None if test is None else top1_of(predict, test),
    }


@torch.no_grad()
def _checked(
    model: nn.Module,
    paths: list[Path],
    backend: str,
    resolution: int,
    test: Iterable | None,
    threads: int | None,
) -> tuple[list[Path], dict[str, Any]]:
    """Check the FP32 model file ``paths[0]`` (its companions after it) of ``backend``
    against ``model`` on random batches of 1 and 2 (logits within a relative tolerance)
    and measure it; returns the files and what ``metadata.json`` records of them.
    :class:`ExportError` (and the files removed) on a mismatch."""
    runtime = get_backend(backend)
    predict = runtime.load_file(paths[0], threads)
    gen = torch.Generator().manual_seed(0)
    worst = tolerance = 0.0
    for batch in (1, 2):
        x = torch.randn(batch, 3, resolution, resolution, generator=gen)
        want, got = model.eval().cpu()(x).numpy(), predict(x.numpy())
        if got.shape != want.shape:
            worst = float("inf")
            break
        worst = max(worst, float(np.abs(got - want).max()))
        tolerance = max(tolerance, _RTOL * max(1.0, float(np.abs(want).max())))
    if not worst <= tolerance:  # also catches NaN
        for path in paths:
            path.unlink(missing_ok=True)
        raise ExportError(
            f"{runtime.runtime}'s model disagrees with PyTorch: max |{runtime.runtime} - "
            f"torch| = {worst:.3g} > {tolerance:.3g}; {paths[0].name} not written"
        )
    record = runtime_record(paths[0], backend, resolution, test, threads, predict)
    return paths, {**record, "max_abs_error": worst}


def write_openvino(
    model: nn.Module,
    onnx_path: Path,
    folder: Path,
    resolution: int,
    test: Iterable | None,
    threads: int | None,
) -> tuple[list[Path], dict[str, Any]]:
    """Convert the checked ``onnx_path`` to OpenVINO IR in ``folder`` (``model.xml``,
    ``model.bin``), check and measure it (:func:`_checked`)."""
    xml = folder / OPENVINO_XML
    save_ir(onnx_path, xml)
    paths, record = _checked(
        model, [xml, folder / OPENVINO_BIN], "openvino", resolution, test, threads
    )
    return paths, {**record, "config": cpu_config(threads)}  # compile with these


def write_litert(
    model: nn.Module,
    onnx_path: Path,
    folder: Path,
    resolution: int,
    test: Iterable | None,
    threads: int | None,
) -> tuple[list[Path], dict[str, Any]]:
    """Convert ``model`` itself (LiteRT's converter reads PyTorch, not ONNX) to
    ``model.tflite`` in ``folder``, batch 1, NCHW input; check and measure it
    (:func:`_checked`)."""
    path = folder / TFLITE
    convert_tflite(model, (1, 3, resolution, resolution), path)
    return _checked(model, [path], "litert", resolution, test, threads)
