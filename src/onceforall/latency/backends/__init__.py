"""The runtimes a network can be timed (and exported) on, one module each, registered by
name. Each is a :class:`~.base.Backend`; ask :func:`get_backend` for one by name."""

from __future__ import annotations

from ...errors import ConfigError
from .base import Backend, Prepared, QuantizedBackend, fixed_input
from .litert import LiteRt, LiteRtInt8
from .onnxruntime import OnnxRuntime, OnnxRuntimeInt8
from .openvino import OpenVino, OpenVinoInt8
from .torch_eager import TorchEager, torch_threads

__all__ = [
    "BACKENDS",
    "Backend",
    "Prepared",
    "QuantizedBackend",
    "fixed_input",
    "get_backend",
    "torch_threads",
]

_REGISTRY: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        TorchEager(),
        OnnxRuntime(),
        OnnxRuntimeInt8(),
        OpenVino(),
        OpenVinoInt8(),
        LiteRt(),
        LiteRtInt8(),
    )
}
BACKENDS: tuple[str, ...] = tuple(_REGISTRY)


def get_backend(name: str | Backend) -> Backend:
    """The backend registered as ``name``; a clear error naming the known ones."""
    if isinstance(name, Backend):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown latency backend {name!r}; known: {', '.join(BACKENDS)}"
        ) from None
