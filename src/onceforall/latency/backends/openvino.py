"""OpenVINO on the CPU, in FP32 and in INT8: the network exported to ONNX, read by
OpenVINO's own converter and compiled for the CPU plugin with the latency hint and a
fixed thread count. An export keeps it as OpenVINO's IR (``model.xml`` with its weights
in ``model.bin``). INT8 is OpenVINO's own post-training quantization (NNCF's
``quantize``, the performance preset: symmetric INT8 weights and activations, ranges
from the calibration batches), kept as ``model.int8.xml`` / ``.bin``.
Optional: ``pip install 'onceforall[openvino]'`` (openvino and nncf)."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ...storage.onnx_export import require
from .base import FileBackend, Prepared, QuantizedBackend, fixed_input

__all__ = ["OpenVino", "OpenVinoInt8", "compiled", "cpu_config", "quantize_nncf", "save_ir"]

_PURPOSE = "the openvino backend"
_EXTRA = "onceforall[openvino]"


def _ov() -> Any:
    return require("openvino", _PURPOSE, extra=_EXTRA)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF's progress bars hidden, and the warning about CUDA that the parts of torch it
    imports log on a CPU-only machine."""
    torch_log = logging.getLogger("torch.utils.cpp_extension")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        torch_log.setLevel(level)


def _nncf() -> Any:
    with _quiet():
        nncf = require("nncf", "the openvino-int8 backend", extra=_EXTRA)
    nncf.set_log_level(logging.ERROR)
    return nncf


def cpu_config(threads: int | None) -> dict[str, Any]:
    """The CPU plugin's settings the backend compiles with: the latency hint, FP32
    inference (the plugin's own default is bf16 on CPUs that have it) and ``threads``
    inference threads (None or 0: the plugin's default)."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def compiled(path: str | Path, threads: int | None) -> Any:
    """The model at ``path`` (ONNX or IR) compiled for OpenVINO's CPU plugin with
    :func:`cpu_config`."""
    return _ov().Core().compile_model(str(path), "CPU", cpu_config(threads))


def save_ir(onnx_path: str | Path, xml_path: str | Path) -> None:
    """Convert the ONNX model at ``onnx_path`` to OpenVINO IR (``.xml`` and ``.bin``),
    weights kept in FP32 (no compression to FP16)."""
    ov = _ov()
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def quantize_nncf(
    fp32_path: str | Path, xml_path: str | Path, batches: Sequence[np.ndarray]
) -> None:
    """Write ``xml_path`` (and its ``.bin``): the FP32 ONNX model at ``fp32_path``
    quantized to INT8 by NNCF for OpenVINO, activation ranges over ``batches``."""
    ov, nncf = _ov(), _nncf()
    model = ov.Core().read_model(str(fp32_path))
    data = [np.ascontiguousarray(b, np.float32) for b in batches]
    with _quiet():
        quantized = nncf.quantize(
            model,
            nncf.Dataset(data),
            preset=nncf.QuantizationPreset.PERFORMANCE,
            subset_size=sum(len(b) for b in data),
        )
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)


class OpenVino(FileBackend):
    name = "openvino"
    runtime = "openvino"
    precision = "fp32"

    def prepare_file(self, path: Path, input_shape: Sequence[int], threads: int | None) -> Prepared:
        request = compiled(path, threads).create_infer_request()
        x = np.ascontiguousarray(fixed_input(input_shape).numpy())
        return Prepared(lambda: request.infer({0: x}), self.threads_for(threads))

    def load_file(self, path: Path, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
        model = compiled(path, threads)
        return lambda x: np.asarray(model({0: np.ascontiguousarray(x, np.float32)})[0])

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "openvino": _ov().get_version()}


class OpenVinoInt8(QuantizedBackend, OpenVino):
    """OpenVINO's INT8 model; the operators NNCF leaves in FP32 run in FP32 (the
    precision hint of :func:`cpu_config`)."""

    name = "openvino-int8"
    int8_file = "model.int8.xml"

    def quantize(
        self, model: nn.Module, fp32_path: Path, out_path: Path, batches: Sequence[np.ndarray]
    ) -> None:
        quantize_nncf(fp32_path, out_path, batches)

    def quantization(self) -> dict[str, Any]:
        return {
            "method": "nncf.quantize, performance preset",
            "weights": "int8, symmetric, per channel",
            "activations": "int8, symmetric, min/max over the calibration images",
        }

    def companions(self, path: Path) -> list[Path]:
        return [path, path.with_suffix(".bin")]

    def versions(self) -> dict[str, str]:
        return {**super().versions(), "nncf": _nncf().__version__}
