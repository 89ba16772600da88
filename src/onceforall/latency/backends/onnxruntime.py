"""ONNX Runtime on the CPU, in FP32 and in INT8.

FP32: the network exported to ONNX with a fixed input shape (what ``model.onnx`` is).
INT8: that model after ONNX Runtime's own post-training static quantization: QDQ format,
per-channel signed INT8 weights, unsigned INT8 activations with min/max ranges
calibrated on sample batches, on the operators of :data:`QUANTIZED_OPS` (convolutions,
the classifier, residual additions, squeeze-excite products and pooling, activations).
On the EPYC (AVX-512 VNNI) that set ran 1.09-1.16x faster than FP32 at batch 1, the
convolutions alone 0.88-1.03x, and signed activations 2-3x slower than FP32
(``bench/int8_variants.py``; ``docs/benchmarks.md``, "Runtimes side by side"). For
timing, the calibration batches are random (the ranges do not change the speed); an
export calibrates on held-out training images (:func:`quantize_int8`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ...storage.onnx_export import require
from .base import FileBackend, Prepared, QuantizedBackend, fixed_input

__all__ = ["QUANTIZED_OPS", "OnnxRuntime", "OnnxRuntimeInt8", "quantize_int8", "session"]

_INSTALL = "timing on ONNX Runtime"
# ONNX operators quantized (HardSwish and HardSigmoid are how h-swish and its gate export).
QUANTIZED_OPS = (
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    "Mul",
    "GlobalAveragePool",
    "HardSwish",
    "HardSigmoid",
    "Relu",
)


def _ort() -> Any:
    return require("onnxruntime", _INSTALL)


def session(path: str | Path, threads: int | None) -> Any:
    """An ONNX Runtime CPU session of the model at ``path`` with ``threads`` intra-op
    threads (None or 0: one per physical core) and quiet logging."""
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    batches: Iterable[np.ndarray],
    operators: Sequence[str] = QUANTIZED_OPS,
) -> None:
    """Write ``out_path``: the FP32 ONNX model at ``fp32_path`` with its ``operators``
    (default: :data:`QUANTIZED_OPS`) quantized to INT8 by ONNX Runtime (QDQ,
    per-channel weights, min/max activation ranges over ``batches``, each an ``input``
    array). The model is
    pre-processed first (shape inference, graph optimisation) as ONNX Runtime's
    quantization guide asks."""
    require("onnx", _INSTALL)
    quantization = require("onnxruntime.quantization", _INSTALL)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {"input": np.ascontiguousarray(batch, np.float32)}

    with tempfile.TemporaryDirectory(prefix="ofa-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantization.quantize_static(
            str(prepared),
            str(out_path),
            Reader(),
            quant_format=quantization.QuantFormat.QDQ,
            op_types_to_quantize=list(operators),
            per_channel=True,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax,
        )


class OnnxRuntime(FileBackend):
    name = "onnxruntime"
    runtime = "onnxruntime"
    precision = "fp32"

    def prepare_file(self, path: Path, input_shape: Sequence[int], threads: int | None) -> Prepared:
        runs = session(path, threads)  # the session holds the model: the file may go
        feed = {runs.get_inputs()[0].name: fixed_input(input_shape).numpy()}
        return Prepared(lambda: runs.run(None, feed), self.threads_for(threads))

    def load_file(self, path: Path, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
        runs = session(path, threads)
        name = runs.get_inputs()[0].name
        return lambda x: runs.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "onnxruntime": _ort().__version__}


class OnnxRuntimeInt8(QuantizedBackend, OnnxRuntime):
    """ONNX Runtime's INT8 model of the ``operators`` quantized (default
    :data:`QUANTIZED_OPS`; other sets are for experiments, ``bench/int8_variants.py``)."""

    name = "onnxruntime-int8"
    int8_file = "model.int8.onnx"

    def __init__(self, operators: Sequence[str] = QUANTIZED_OPS) -> None:
        self.operators = tuple(operators)

    def quantize(
        self, model: nn.Module, fp32_path: Path, out_path: Path, batches: Sequence[np.ndarray]
    ) -> None:
        quantize_int8(fp32_path, out_path, batches, self.operators)

    def quantization(self) -> dict[str, Any]:
        return {
            "method": "onnxruntime quantize_static, QDQ",
            "operators": list(self.operators),  # the rest stays FP32
            "weights": "int8, per channel",
            "activations": "uint8, min/max over the calibration images",
        }
