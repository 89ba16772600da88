"""ONNX: export a network, run it with onnxruntime, and check it against PyTorch.

Used by export (the deployable ``model.onnx``, checked before it is kept) and by the
onnxruntime latency backend. onnx, onnxruntime and onnxscript are optional
(``pip install 'onceforall[deploy]'``); :func:`require` says so when one is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import MissingDependencyError, OnceForAllError

__all__ = [
    "ExportError",
    "MissingDependencyError",
    "ONNX_OPSET",
    "export_and_check_onnx",
    "export_onnx",
    "onnx_outputs",
    "require",
]

ONNX_OPSET = 17
_ONNX_BATCHES = (1, 2, 5)  # batch sizes the ONNX model is checked at (dynamic batch axis)
_ONNX_RTOL = 1e-4  # allowed max |onnx - torch|, relative to max(1, max |logits|)


class ExportError(OnceForAllError, RuntimeError):
    """An export failed its checks, or an export directory cannot be loaded safely."""


def require(module: str, purpose: str, extra: str = "onceforall[deploy]") -> Any:
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise MissingDependencyError(
            f"{purpose} needs the '{package}' package, which is not installed: "
            f"pip install '{extra}'"
        ) from exc


def require_installed(module: str, purpose: str, extra: str = "onceforall[deploy]") -> None:
    """Like :func:`require`, without importing ``module`` here (a child process will)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingDependencyError(
            f"{purpose} needs the '{module.split('.')[0]}' package, which is not installed: "
            f"pip install '{extra}'"
        )


def _has_dynamo_flag() -> bool:
    return "dynamo" in inspect.signature(torch.onnx.export).parameters


def export_onnx(
    model: nn.Module,
    input_shape: Sequence[int],
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = False,
    output_names: Sequence[str] = ("logits",),
    batch_outputs: Sequence[str] | None = None,
    keep_batchnorm: bool = False,
) -> str:
    """Write ``model`` (eval mode, CPU) to ``path`` as ONNX (input ``input``, outputs
    ``output_names``), with a dynamic batch axis if asked (on the input and on
    ``batch_outputs``, by default every output); returns the exporter used.

    The TorchScript exporter (``dynamo=False``) is quick (well under a second per model)
    and needs no onnxscript; torch has deprecated it, so where it is gone or fails the
    torch.export-based one is used. ``keep_batchnorm`` keeps BN layers as
    ``BatchNormalization`` nodes instead of folding them into the convolutions (the
    TorchScript exporter folds them in eval mode unless told to preserve the mode).
    """
    model = model.eval().cpu()
    example = (torch.randn(*input_shape),)
    names = {"input_names": ["input"], "output_names": list(output_names)}
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # PRESERVE with an eval-mode model: nothing is trained, folding is safe.
            warnings.filterwarnings("ignore", message=".*constant folding.*")
            batched = output_names if batch_outputs is None else batch_outputs
            batch = {name: {0: "batch"} for name in ["input", *batched]}
            axes = batch if dynamic_batch else None
            # torch < 2.5 has only this exporter and no ``dynamo`` argument.
            legacy: dict[str, Any] = {"dynamo": False} if _has_dynamo_flag() else {}
            if keep_batchnorm:
                legacy["training"] = torch.onnx.TrainingMode.PRESERVE
            torch.onnx.export(
                model,
                example,
                str(path),
                opset_version=ONNX_OPSET,
                dynamic_axes=axes,
                **legacy,
                **names,
            )
        return "torchscript"
    except Exception as legacy_error:  # removed, or cannot trace this model
        path.unlink(missing_ok=True)
        require("onnxscript", "ONNX export with torch.export (dynamo=True)")
        shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
        try:
            torch.onnx.export(
                model,
                example,
                str(path),
                dynamo=True,
                external_data=False,
                verbose=False,
                dynamic_shapes=shapes,
                **names,
            )
        except Exception as exc:
            raise ExportError(
                "torch.onnx.export failed with both exporters: TorchScript "
                f"({type(legacy_error).__name__}: {str(legacy_error)[:300]}), torch.export "
                f"({type(exc).__name__}: {str(exc)[:300]})"
            ) from exc
        return "dynamo"


def onnx_outputs(path: Path, inputs: list[np.ndarray], threads: int | None) -> list[np.ndarray]:
    """Logits of the ONNX model at ``path`` for each input, computed by onnxruntime."""
    ort = require("onnxruntime", "checking the ONNX export")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [session.run(None, {name: x})[0] for x in inputs]


@torch.no_grad()
def export_and_check_onnx(
    model: nn.Module, resolution: int, path: Path, threads: int | None
) -> dict[str, Any]:
    """Export to ``path``, validate the graph, and compare onnxruntime's logits with
    PyTorch's on random inputs; raise :class:`ExportError` on any mismatch."""
    onnx_module = require("onnx", "ONNX export")
    ort = require("onnxruntime", "checking the ONNX export")
    exporter = export_onnx(model, (2, 3, resolution, resolution), path, dynamic_batch=True)
    try:
        onnx_module.checker.check_model(str(path))
        graph = onnx_module.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ExportError(f"the exported ONNX model is invalid: {exc}") from exc
    batch_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    dynamic = not batch_dim.HasField("dim_value")
    gen = torch.Generator().manual_seed(0)
    batches = _ONNX_BATCHES if dynamic else (batch_dim.dim_value,)
    inputs = [torch.randn(b, 3, resolution, resolution, generator=gen) for b in batches]
    expected = [model(x).numpy() for x in inputs]
    try:
        actual = onnx_outputs(path, [x.numpy() for x in inputs], threads)
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot run the exported model: {exc}") from exc
    worst, tolerance = 0.0, 0.0
    for want, got in zip(expected, actual):
        if got.shape != want.shape:
            raise ExportError(f"ONNX output shape {got.shape} != PyTorch's {want.shape}")
        worst = max(worst, float(np.abs(got - want).max()))
        tolerance = max(tolerance, _ONNX_RTOL * max(1.0, float(np.abs(want).max())))
    if not worst <= tolerance:  # also catches NaN
        raise ExportError(
            f"ONNX model disagrees with PyTorch: max |onnxruntime - torch| = {worst:.3g} "
            f"> {tolerance:.3g} ({_ONNX_RTOL:g} of the logits' scale); model.onnx not written"
        )
    return {
        "exporter": exporter,
        "opset": max(op.version for op in graph.opset_import if op.domain in ("", "ai.onnx")),
        "dynamic_batch": dynamic,
        "input": "input",
        "output": "logits",
        "checked_batches": list(batches),
        "max_abs_diff": worst,
        "tolerance": tolerance,
        "onnx_version": onnx_module.__version__,
        "onnxruntime_version": ort.__version__,
    }
