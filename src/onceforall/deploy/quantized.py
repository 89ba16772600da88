"""The INT8 models of an export (``model.int8.onnx`` for ONNX Runtime, ``model.int8.xml``
for OpenVINO, ``model.int8.tflite`` for LiteRT: each runtime's own quantizer,
:class:`~onceforall.latency.backends.QuantizedBackend`), checked before they are kept.

Calibration and the check use held-out training images only (the images BN
recalibration uses; never the test split): the first half calibrates the activation
ranges, the second half checks that INT8 predicts the class FP32 PyTorch predicts
(top-1 agreement, at least :data:`MIN_AGREEMENT`). The INT8 model's own test top-1 and
its latency on this CPU are measured and recorded with the file in ``metadata.json``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ..arch import ArchValue
from ..evaluation import SubnetEvaluator, recalibrate_bn
from ..latency.backends import QuantizedBackend, get_backend
from ..models import Supernet
from ..storage.onnx_export import ExportError, export_onnx
from .runtime_files import runtime_record, top1_of

__all__ = [
    "INT8_BACKEND",
    "MIN_AGREEMENT",
    "Int8Images",
    "int8_top1",
    "write_int8",
]

INT8_BACKEND = "onnxruntime-int8"
MIN_AGREEMENT = 0.9  # below this, the quantized model is not the network: refused


@dataclass(frozen=True)
class Int8Images:
    """Where an INT8 model's images come from: ``held_out`` batches of held-out training
    images (calibration, then the agreement check), ``test`` batches (its test top-1;
    None: not measured) and the agreement below which the model is refused."""

    held_out: Iterable
    test: Iterable | None = None
    min_agreement: float = MIN_AGREEMENT


def _images(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _halves(batches: Iterable) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The images of ``batches`` as arrays, split into a first and a second half."""
    arrays = [_images(b).float().cpu().numpy() for b in batches]
    images = np.concatenate(arrays) if arrays else np.zeros((0,))
    if len(images) < 2:
        raise ExportError(
            f"quantizing to INT8 needs at least 2 held-out images (calibration and check); "
            f"got {len(images)}"
        )
    middle = (len(images) + 1) // 2
    return _chunks(images[:middle]), _chunks(images[middle:])


def _chunks(images: np.ndarray, size: int = 64) -> list[np.ndarray]:
    return [images[i : i + size] for i in range(0, len(images), size)]


def quantized_backend(backend: str | QuantizedBackend) -> QuantizedBackend:
    """The INT8 backend ``backend`` names; :class:`ValueError` for an FP32 one."""
    runtime = get_backend(backend)
    if not isinstance(runtime, QuantizedBackend):
        raise ValueError(f"{runtime.name} is not an INT8 backend")
    return runtime


@torch.no_grad()
def write_int8(
    model: nn.Module,
    fp32_path: Path,
    folder: Path,
    images: Int8Images,
    *,
    backend: str | QuantizedBackend = INT8_BACKEND,
    threads: int | None = None,
) -> tuple[list[Path], dict[str, Any]]:
    """Quantize the checked FP32 ONNX model at ``fp32_path`` (the export of ``model``)
    with ``backend``'s quantizer into ``folder`` (its ``int8_file``), check it and
    measure it; returns the files written (the model first) and what ``metadata.json``
    records of it. Raises :class:`ExportError` (and removes what it wrote) when it
    disagrees with ``model`` on more than ``1 - images.min_agreement`` of the held-out
    images."""
    runtime = quantized_backend(backend)
    out_path = folder / runtime.int8_file
    calibration, check = _halves(images.held_out)
    model = model.eval().cpu()
    runtime.quantize(model, fp32_path, out_path, calibration)
    predict = runtime.load_file(out_path, threads)
    same = total = 0
    for x in check:
        want = model(torch.from_numpy(x)).argmax(1).numpy()
        same += int((predict(x).argmax(1) == want).sum())
        total += len(x)
    agreement, min_agreement = same / total, images.min_agreement
    if not agreement >= min_agreement:
        for path in runtime.companions(out_path):
            path.unlink(missing_ok=True)
        raise ExportError(
            f"{runtime.name}'s INT8 model predicts the FP32 network's class on only "
            f"{agreement:.1%} of {total} held-out images (at least {min_agreement:.0%} "
            f"required); {out_path.name} not written"
        )
    resolution = calibration[0].shape[-1]
    record = runtime_record(out_path, runtime, resolution, images.test, threads, predict)
    return runtime.companions(out_path), {
        **record,
        "agreement_top1": agreement,
        "calibration_images": int(sum(len(x) for x in calibration)),
        "agreement_images": total,
        "quantization": runtime.quantization(),
    }


def int8_top1(
    supernet: Supernet,
    arch: ArchValue,
    evaluator: SubnetEvaluator,
    backend: str | QuantizedBackend = INT8_BACKEND,
) -> float:
    """Test top-1 of ``arch``'s INT8 model on ``backend`` as an export would write it (BN
    recalibrated, exported, quantized on the held-out images): what specialisation on
    an INT8 backend reports beside the FP32 top-1. Not refused for disagreement: it is a
    measurement, the agreement check is the export's."""
    runtime = quantized_backend(backend)
    held_out = evaluator.batches("calibration", arch.r)
    net = recalibrate_bn(supernet, arch, held_out, evaluator.calibration_images).eval().cpu()
    with tempfile.TemporaryDirectory(prefix="ofa-int8-") as tmp:
        fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / runtime.int8_file
        if runtime.reads_onnx:  # LiteRT's quantizer converts the module instead
            export_onnx(net, (2, 3, arch.r, arch.r), fp32, dynamic_batch=True)
        calibration, _ = _halves(held_out)
        runtime.quantize(net, fp32, int8, calibration)
        return top1_of(runtime.load_file(int8, None), evaluator.batches("test", arch.r))
