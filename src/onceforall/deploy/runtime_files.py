"""The model files an export holds for the runtimes it ships to, besides the safetensors
weights, and what ``metadata.json`` records of each: runtime, precision, versions,
batch-1 latency on this CPU and the file's own test top-1.

``model.onnx`` (ONNX Runtime) is written and checked by
:func:`~onceforall.storage.onnx_export.export_and_check_onnx`; OpenVINO's IR is converted
from it here and checked the same way (logits within a relative tolerance of PyTorch's);
INT8 files are :mod:`.quantized`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..latency.backends import Backend, get_backend
from ..latency.backends.openvino import cpu_config, save_ir
from ..latency.measure import backend_versions, measure_latency
from ..storage.onnx_export import ExportError

__all__ = ["OPENVINO_BIN", "OPENVINO_XML", "runtime_record", "top1_of", "write_openvino"]

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
def write_openvino(
    model: nn.Module,
    onnx_path: Path,
    folder: Path,
    resolution: int,
    test: Iterable | None,
    threads: int | None,
) -> tuple[list[Path], dict[str, Any]]:
    """Convert the checked ``onnx_path`` to OpenVINO IR in ``folder`` (``model.xml``,
    ``model.bin``), check its logits against ``model``'s on random batches of 1 and 2
    and measure it; returns the files and what ``metadata.json`` records of them.
    :class:`ExportError` (and nothing left) on a mismatch."""
    xml = folder / OPENVINO_XML
    save_ir(onnx_path, xml)
    predict = get_backend("openvino").load_file(xml, threads)
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
        for name in (OPENVINO_XML, OPENVINO_BIN):
            (folder / name).unlink(missing_ok=True)
        raise ExportError(
            f"OpenVINO's model disagrees with PyTorch: max |openvino - torch| = {worst:.3g} "
            f"> {tolerance:.3g}; {OPENVINO_XML} not written"
        )
    return [xml, folder / OPENVINO_BIN], {
        **runtime_record(xml, "openvino", resolution, test, threads, predict),
        "config": cpu_config(threads),  # compile with these to get what was checked
        "max_abs_error": worst,
    }
