"""LiteRT (TFLite) on the CPU, in FP32: the network converted by ``litert-torch`` from the
PyTorch module itself (not from ONNX) into a ``.tflite`` file, run by the
``ai-edge-litert`` interpreter (XNNPACK) with a fixed thread count. The converted model
keeps PyTorch's NCHW input (the converter adds the transposes) and a fixed input shape,
batch size included. An export keeps it as ``model.tflite``.
Optional: ``pip install 'onceforall[litert]'``.

The conversion runs in a child process (spawned, not forked): the converter imports JAX,
which runs threads that a later fork of this process (a data loader's workers) could
deadlock on, and registers global state in torch. A conversion takes 20-50 s on the
2-core machines (it traces and lowers the network through StableHLO), so a per-block
table on this backend takes an hour or more; whole networks are what it times in
practice (``docs/benchmarks.md``, "Runtimes side by side"). Its INT8 path (PT2E static
quantization, INT8 input and output tensors) ran slower than FP32 on the AVX2 machine
and is not a backend yet.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ...storage.onnx_export import require, require_installed
from .base import FileBackend, Prepared, fixed_input

__all__ = ["LiteRt", "convert_tflite", "interpreter"]

_PURPOSE = "the litert backend"
_EXTRA = "onceforall[litert]"
TFLITE = "model.tflite"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The converter's progress output and the warnings its imports raise, hidden."""
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        level = logging.root.level
        logging.root.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.root.setLevel(level)


def _interpreter_module() -> Any:
    return require("ai_edge_litert.interpreter", _PURPOSE, extra=_EXTRA)


@contextlib.contextmanager
def _no_native_output(*fds: int) -> Iterator[None]:
    """File descriptors ``fds`` sent to /dev/null meanwhile: the converter's and the
    interpreter's native code log to them directly (absl, TensorFlow Lite)."""
    saved = [os.dup(fd) for fd in fds]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(devnull, fd)
        yield
    finally:
        for fd, copy in zip(fds, saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


def _convert(model: nn.Module, input_shape: tuple[int, ...], path: str) -> None:
    """The conversion, in the child process (whose output is its own to silence)."""
    with _no_native_output(1, 2), _quiet():
        converter = importlib.import_module("litert_torch")
        with torch.no_grad():
            converter.convert(model, (fixed_input(input_shape),)).export(path)


def convert_tflite(model: nn.Module, input_shape: Sequence[int], path: str | Path) -> None:
    """Write ``model`` (eval mode, CPU) to ``path`` as a FP32 ``.tflite`` file taking an
    input of ``input_shape`` (NCHW, as in PyTorch), converted in a spawned process."""
    require_installed("litert_torch", _PURPOSE, extra=_EXTRA)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        shape = tuple(int(s) for s in input_shape)
        pool.submit(_convert, model.eval().cpu(), shape, str(path)).result()


def interpreter(path: str | Path, threads: int | None) -> Any:
    """The LiteRT interpreter of the ``.tflite`` file at ``path``, tensors allocated,
    with ``threads`` threads (None or 0: its default)."""
    module = _interpreter_module()
    with _no_native_output(2):  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        runs = module.Interpreter(model_path=str(path), num_threads=threads or None)
        runs.allocate_tensors()
    return runs


class LiteRt(FileBackend):
    name = "litert"
    runtime = "litert"
    precision = "fp32"

    def model_file(self, model: nn.Module, input_shape: Sequence[int], folder: Path) -> Path:
        path = folder / TFLITE
        convert_tflite(model, input_shape, path)
        return path

    def prepare_file(self, path: Path, input_shape: Sequence[int], threads: int | None) -> Prepared:
        runs = interpreter(path, threads)
        (source,) = runs.get_input_details()
        x = np.ascontiguousarray(fixed_input(input_shape).numpy())
        if tuple(source["shape"]) != tuple(x.shape):
            raise ValueError(
                f"{path.name} takes inputs of shape {tuple(source['shape'])}, not {x.shape}"
            )

        def run() -> None:
            runs.set_tensor(source["index"], x)
            runs.invoke()

        return Prepared(run, self.threads_for(threads))

    def load_file(self, path: Path, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
        """The file as a function of a batch of any size: its input shape is fixed (batch
        1 as an export writes it), so the batch runs image by image."""
        runs = interpreter(path, threads)
        (source,) = runs.get_input_details()
        target = runs.get_output_details()[0]
        per_call = int(source["shape"][0])

        def predict(x: np.ndarray) -> np.ndarray:
            x = np.ascontiguousarray(x, np.float32)
            outputs = []
            for start in range(0, len(x), per_call):
                chunk = x[start : start + per_call]
                if len(chunk) < per_call:  # the last, short chunk: padded, then cut
                    pad = np.zeros((per_call - len(chunk), *chunk.shape[1:]), np.float32)
                    chunk = np.concatenate([chunk, pad])
                runs.set_tensor(source["index"], chunk)
                runs.invoke()
                outputs.append(np.array(runs.get_tensor(target["index"])))
            return np.concatenate(outputs)[: len(x)]

        return predict

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        require_installed("litert_torch", _PURPOSE, extra=_EXTRA)  # or the extra, named
        _interpreter_module()
        return {
            "torch": torch.__version__,
            "litert-torch": version("litert-torch"),
            "ai-edge-litert": version("ai-edge-litert"),
        }
