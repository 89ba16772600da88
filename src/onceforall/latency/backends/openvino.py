"""OpenVINO on the CPU, in FP32: the network exported to ONNX, read by OpenVINO's own
converter and compiled for the CPU plugin with the latency hint and a fixed thread count.
An export keeps it as OpenVINO's IR (``model.xml`` with its weights in ``model.bin``).
Optional: ``pip install 'onceforall[openvino]'``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ...storage.onnx_export import require
from .base import FileBackend, Prepared, fixed_input

__all__ = ["OpenVino", "compiled", "cpu_config", "save_ir"]

_PURPOSE = "the openvino backend"
_EXTRA = "onceforall[openvino]"


def _ov() -> Any:
    return require("openvino", _PURPOSE, extra=_EXTRA)


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
