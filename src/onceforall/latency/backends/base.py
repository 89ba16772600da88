"""What every runtime offers the rest of the library: prepare a network to be called on
a fixed input (for timing), say which software versions did it, and what it needs.

A backend is one runtime at one precision (``onnxruntime`` and ``onnxruntime-int8`` are
two). Latency measurement, the per-block table and the forecast ask a :class:`Backend`;
none of them branches on which runtime it holds.
"""

from __future__ import annotations

import tempfile
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ...storage.onnx_export import export_onnx

__all__ = [
    "Backend",
    "FileBackend",
    "Prepared",
    "QuantizedBackend",
    "fixed_input",
    "random_batches",
]


@dataclass(frozen=True)
class Prepared:
    """A network ready to run: ``run()`` is one forward pass on the fixed input (waiting
    for the device); ``threads`` the intra-op thread count it runs with (0: the runtime's
    own default)."""

    run: Callable[[], Any]
    threads: int


class Backend(ABC):
    """One runtime at one precision."""

    name: str  # as tables, configs and the command line spell it
    runtime: str  # the runtime's own name, recorded with each table
    precision: str  # "fp32" or "int8"
    cpu_only: bool = True

    @abstractmethod
    def prepare(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        *,
        device: torch.device,
        threads: int | None,
    ) -> Prepared:
        """``model`` converted (and quantized, for INT8) for this runtime, called on a
        seeded random input of ``input_shape``."""

    def prepare_file(self, path: Path, input_shape: Sequence[int], threads: int | None) -> Prepared:
        """A model file of this runtime (as an export writes it) called on the seeded
        random input; runtimes that time modules only refuse."""
        raise ValueError(f"the {self.name} backend times modules, not model files")

    def load_file(self, path: Path, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
        """A model file of this runtime as a function from a batch of images (N, 3, r, r)
        to its logits, to check and evaluate an export's file."""
        raise ValueError(f"the {self.name} backend runs modules, not model files")

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Versions of the software a timing comes from (saved with tables and results);
        raises :class:`~onceforall.errors.MissingDependencyError` when not installed."""

    def scope(self, threads: int | None) -> AbstractContextManager[Any]:
        """What calls of prepared networks need around them (PyTorch: thread count and
        inference mode; runtimes with sessions carry their settings themselves)."""
        return nullcontext()

    def threads_for(self, threads: int | None) -> int:
        """The intra-op thread count a network prepared with ``threads`` runs with (0:
        the runtime's own default)."""
        return threads or 0

    def check_device(self, device: torch.device) -> None:
        if self.cpu_only and device.type != "cpu":
            raise ValueError(f"the {self.name} backend runs on the CPU only; use device='cpu'")


def fixed_input(input_shape: Sequence[int]) -> torch.Tensor:
    """The seeded random input every backend times a network on."""
    return torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))


def random_batches(input_shape: Sequence[int], count: int) -> list[np.ndarray]:
    """``count`` seeded random batches of ``input_shape``: what an INT8 model timed for a
    table is calibrated on (the ranges do not change the speed)."""
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(*input_shape, generator=gen).numpy() for _ in range(count)]


class FileBackend(Backend):
    """A runtime that runs model files converted from the network's ONNX export (ONNX
    Runtime, OpenVINO): a module is exported (and converted by :meth:`model_file`) into
    a temporary folder, then prepared as a file."""

    def prepare(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        *,
        device: torch.device,
        threads: int | None,
    ) -> Prepared:
        self.check_device(device)
        self.versions()  # installed, or the error that names the extra: before exporting
        with tempfile.TemporaryDirectory(prefix=f"ofa-{self.name}-") as tmp:
            path = self.model_file(model, input_shape, Path(tmp))
            return self.prepare_file(path, input_shape, threads)  # the runtime holds it now

    def model_file(self, model: nn.Module, input_shape: Sequence[int], folder: Path) -> Path:
        """The file this runtime runs, written into ``folder``: the ONNX export (with a
        fixed input shape) unless the runtime converts it further."""
        path = folder / "model.onnx"
        export_onnx(model, input_shape, path)
        return path

    @abstractmethod
    def prepare_file(
        self, path: Path, input_shape: Sequence[int], threads: int | None
    ) -> Prepared: ...

    @abstractmethod
    def load_file(self, path: Path, threads: int | None) -> Callable[[np.ndarray], np.ndarray]: ...


class QuantizedBackend(FileBackend):
    """A runtime's INT8 model, made by its own post-training quantizer from the FP32
    network (its ONNX export, or the module for runtimes that convert from PyTorch) and
    calibration batches (:meth:`quantize`). Timing calibrates on random batches (the
    ranges do not change the speed); an export calibrates on held-out training images
    (:func:`~onceforall.deploy.quantized.write_int8`)."""

    precision = "int8"
    int8_file: str  # the file name an export gives the quantized model
    calibration_batches = 4
    reads_onnx = True  # False: the quantizer converts the module and ignores ``fp32_path``

    def model_file(self, model: nn.Module, input_shape: Sequence[int], folder: Path) -> Path:
        fp32 = FileBackend.model_file(self, model, input_shape, folder)  # the ONNX export
        batches = random_batches(input_shape, self.calibration_batches)
        path = folder / self.int8_file
        self.quantize(model, fp32, path, batches)
        return path

    @abstractmethod
    def quantize(
        self, model: nn.Module, fp32_path: Path, out_path: Path, batches: Sequence[np.ndarray]
    ) -> None:
        """Write ``out_path`` (and its companion files): the FP32 network ``model``, whose
        ONNX export is ``fp32_path`` (the quantizer reads the one its runtime converts
        from), quantized to INT8, activation ranges calibrated on ``batches``."""

    @abstractmethod
    def quantization(self) -> dict[str, Any]:
        """What ``metadata.json`` records of how the model was quantized."""

    def companions(self, path: Path) -> list[Path]:
        """Every file :meth:`quantize` writes for ``path`` (``path`` first)."""
        return [path]
