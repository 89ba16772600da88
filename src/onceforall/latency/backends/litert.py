"""LiteRT (TFLite) on the CPU, FP32 and INT8: the network converted by ``litert-torch`` from
the PyTorch module itself (not from ONNX) into a ``.tflite`` file, run by the
``ai-edge-litert`` interpreter (XNNPACK) with a fixed thread count. The converted model
keeps PyTorch's NCHW input (the converter adds the transposes) and a fixed input shape,
batch size included. An export keeps it as ``model.tflite`` (``model.int8.tflite``).
Optional: ``pip install 'onceforall[litert]'``.

INT8 is litert-torch's own post-training static quantization (PT2E: symmetric INT8
weights per channel, INT8 activations with min/max ranges). Its model takes and returns
INT8 tensors, as full-integer TFLite models do on phones; :meth:`LiteRt.load_file`
quantizes the images and dequantizes the logits with the file's own scales, and timing
feeds it an already quantized input.

The conversion runs in a child process (spawned, not forked): the converter imports JAX,
which runs threads that a later fork of this process (a data loader's workers) could
deadlock on, and registers global state in torch. Starting that child and importing the
converter is most of a conversion's cost, so one child serves every conversion of a
process (:class:`Converter`): a per-block table's hundreds of parts pay it once.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import multiprocessing
import os
import pickle
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ...storage.onnx_export import require, require_installed
from .base import FileBackend, Prepared, QuantizedBackend, fixed_input, random_batches

__all__ = ["Converter", "LiteRt", "LiteRtInt8", "convert_tflite", "interpreter"]

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


def _quantized(model: nn.Module, example: tuple[torch.Tensor], calibration: list) -> tuple:
    """``model`` with litert-torch's PT2E static INT8 quantization applied (activation
    ranges observed on the ``calibration`` arrays, in chunks of the example's batch size),
    and the converter's configuration for it."""
    pt2e = importlib.import_module("litert_torch.quantize.pt2e_quantizer")
    quant_config = importlib.import_module("litert_torch.quantize.quant_config")
    steps = importlib.import_module("torchao.quantization.pt2e.quantize_pt2e")
    config = pt2e.get_symmetric_quantization_config(is_per_channel=True)
    quantizer = pt2e.PT2EQuantizer().set_global(config)
    graph = steps.prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    per_call = len(example[0])
    for batch in calibration:
        for chunk in torch.from_numpy(np.ascontiguousarray(batch, np.float32)).split(per_call):
            if len(chunk) == per_call:
                graph(chunk)
    graph = steps.convert_pt2e(graph, fold_quantize=False)
    return graph, {"quant_config": quant_config.QuantConfig(pt2e_quantizer=quantizer)}


def _convert(
    pickled: bytes, input_shape: tuple[int, ...], path: str, calibration: list | None
) -> None:
    """The conversion, in the child process (whose output is its own to silence) of the
    model pickled by :class:`Converter`."""
    with _no_native_output(1, 2), _quiet():
        model = pickle.loads(pickled)
        converter = importlib.import_module("litert_torch")
        example = (fixed_input(input_shape),)
        with torch.no_grad():
            options: dict[str, Any] = {}
            if calibration is not None:
                model, options = _quantized(model, example, calibration)
            converter.convert(model, example, **options).export(path)


class Converter:
    """A spawned child process that converts model after model, started at the first
    conversion and kept until :meth:`close` (or the end of this process): it imports the
    converter once. A child that dies is replaced at the next conversion."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def __call__(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        path: str | Path,
        calibration: Sequence[np.ndarray] | None = None,
    ) -> None:
        """Write ``model`` (eval mode, CPU) to ``path`` as a ``.tflite`` file taking an
        input of ``input_shape`` (NCHW, as in PyTorch): FP32, or INT8 with activation
        ranges over the ``calibration`` batches when given."""
        require_installed("litert_torch", _PURPOSE, extra=_EXTRA)
        if calibration is not None:
            require_installed("torchao", "the litert-int8 backend", extra=_EXTRA)
            calibration = [np.asarray(b, np.float32) for b in calibration]
        # Sent as plain pickled bytes: handed to the pool as a module, its tensors would go
        # through torch's shared memory, which keeps a file descriptor open in this
        # process for every tensor of every model converted while the model lives (a
        # table's hundreds of parts ran out of descriptors).
        pickled = pickle.dumps(model.eval().cpu())
        task = (pickled, tuple(int(s) for s in input_shape), str(path), calibration)
        try:
            future = self._started().submit(_convert, *task)
        except BrokenProcessPool:  # the child died since the last conversion: a new one
            self.close()
            future = self._started().submit(_convert, *task)
        try:
            future.result()
        except BrokenProcessPool:  # died during this conversion (out of memory, killed)
            self.close()
            raise

    def _started(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(1, mp_context=context)
        return self._pool

    def close(self) -> None:
        """Stop the child (a later conversion starts a new one)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


convert_tflite = Converter()  # the process's converter: one child for every conversion


def interpreter(path: str | Path, threads: int | None) -> Any:
    """The LiteRT interpreter of the ``.tflite`` file at ``path``, tensors allocated,
    with ``threads`` threads (None or 0: its default)."""
    module = _interpreter_module()
    with _no_native_output(2):  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        runs = module.Interpreter(model_path=str(path), num_threads=threads or None)
        runs.allocate_tensors()
    return runs


def _to_input(detail: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Images ``x`` as the interpreter's input tensor ``detail`` takes them: float, or
    quantized with the tensor's own scale and zero point."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return np.ascontiguousarray(x, dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    q = np.clip(np.round(x / scale) + zero_point, info.min, info.max)
    return np.ascontiguousarray(q.astype(dtype))


def _from_output(detail: dict[str, Any], y: np.ndarray) -> np.ndarray:
    """The output tensor ``detail``'s values ``y`` as float logits (dequantized)."""
    if np.dtype(detail["dtype"]).kind == "f":
        return np.array(y, np.float32)
    scale, zero_point = detail["quantization"]
    return (y.astype(np.float32) - zero_point) * np.float32(scale)


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
        x = _to_input(source, fixed_input(input_shape).numpy())
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
        1 as an export writes it), so the batch runs image by image. INT8 inputs and
        outputs are quantized and dequantized here."""
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
                runs.set_tensor(source["index"], _to_input(source, chunk))
                runs.invoke()
                outputs.append(_from_output(target, runs.get_tensor(target["index"])))
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


class LiteRtInt8(QuantizedBackend, LiteRt):
    """LiteRT's INT8 model, quantized by litert-torch (PT2E, from the module: the ONNX
    export is not used). An export's file takes batch 1, as LiteRT's FP32 file does."""

    name = "litert-int8"
    int8_file = "model.int8.tflite"
    reads_onnx = False  # litert-torch converts (and quantizes) the PyTorch module

    def model_file(self, model: nn.Module, input_shape: Sequence[int], folder: Path) -> Path:
        path = folder / self.int8_file
        batches = random_batches(input_shape, self.calibration_batches)
        convert_tflite(model, input_shape, path, calibration=batches)
        return path

    def quantize(
        self, model: nn.Module, fp32_path: Path, out_path: Path, batches: Sequence[np.ndarray]
    ) -> None:
        convert_tflite(model, (1, *batches[0].shape[1:]), out_path, calibration=batches)

    def quantization(self) -> dict[str, Any]:
        return {
            "method": "litert-torch PT2E static quantization",
            "weights": "int8, symmetric, per channel",
            "activations": "int8, per tensor, zero point, min/max over the calibration images",
            "input_output": "int8 (scale and zero point in the file)",
        }

    def versions(self) -> dict[str, str]:
        require_installed("torchao", "the litert-int8 backend", extra=_EXTRA)
        from importlib.metadata import version

        return {**super().versions(), "torchao": version("torchao")}
