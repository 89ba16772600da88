"""The export folder's format, and loading an export back without the supernet.

An export directory holds::

    model.safetensors  weights (state dict; the spec is repeated in its header metadata)
    arch.json          the arch in the authors' format ({"ks", "e", "d", "r": [r]})
    spec.json          family + config + arch: enough to rebuild the network's modules
    model.onnx         the same network for onnxruntime (checked against PyTorch first)
    (optional, ``ofa export --backend``) model.int8.onnx, model.xml/.bin,
    model.int8.xml/.bin, model.tflite: the model files of other runtimes, each checked
    before it was kept (see ``metadata["runtimes"]``)
    metadata.json      accuracy, MACs, params, latency and its device, versions, and the
                       SHA-256 and size of every other file

:func:`load_exported` requires ``metadata.json`` and checks every file it lists before
it builds anything; it reads JSON and safetensors only: nothing from the directory is
unpickled or executed. Writing is :mod:`onceforall.deploy.export`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch
from torch import nn

from ..errors import InputNotFoundError
from ..models import build_subnet
from ..models.features import DEFAULT_OUT_INDICES, features_of
from .onnx_export import ExportError, require
from .state_dicts import state_dict_problems

__all__ = [
    "ARCH",
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA",
    "ONNX",
    "SPEC",
    "WEIGHTS",
    "is_export",
    "json_bytes",
    "load_exported",
    "sha256",
]

PathLike = Union[str, "os.PathLike[str]"]

WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
ARCH = "arch.json"
SPEC = "spec.json"
METADATA = "metadata.json"
FORMAT = "onceforall-subnet"
FORMAT_VERSION = 1


def json_bytes(value: Any) -> bytes:
    """``value`` as the indented JSON an export's files hold."""
    return (json.dumps(value, indent=2) + "\n").encode()


def sha256(data: bytes) -> str:
    """The hex SHA-256 ``metadata.json`` records for a file's contents."""
    return hashlib.sha256(data).hexdigest()


def is_export(folder: Path) -> bool:
    """Whether ``folder`` holds the metadata of an export (not whether it is intact)."""
    try:
        return json.loads((folder / METADATA).read_text()).get("format") == FORMAT
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ExportError(f"{path} is not readable JSON: {exc}") from exc


def _json_from(data: bytes, path: Path) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ExportError(f"{path} is not readable JSON: {exc}") from exc


def _verified_files(directory: Path) -> dict[str, bytes]:
    """Every file ``metadata.json`` lists, read and checked against its SHA-256 and size;
    the weights and the spec must be among them."""
    metadata_path = directory / METADATA
    if not metadata_path.is_file():
        raise ExportError(
            f"{metadata_path} not found: {directory} is not a complete export (an export "
            f"records the hash of each of its files in {METADATA})"
        )
    metadata = _read_json(metadata_path)
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ExportError(f"{metadata_path} is not the metadata of an onceforall export")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ExportError(
            f"{metadata_path}: export format version {version!r}; this version of "
            f"onceforall reads {FORMAT_VERSION} and older: upgrade onceforall"
        )
    listed = metadata.get("files")
    if not isinstance(listed, dict) or not {WEIGHTS, SPEC} <= set(listed):
        raise ExportError(f"{metadata_path} does not list {WEIGHTS} and {SPEC} with their hashes")
    contents = {}
    for name, record in listed.items():
        path = directory / name
        if Path(name).name != name or not isinstance(record, dict):
            raise ExportError(f"{metadata_path} lists {name!r} in an unknown form")
        if not path.is_file():
            raise ExportError(f"{path} not found: the export is incomplete ({METADATA} lists it)")
        data = path.read_bytes()
        if record.get("sha256") != sha256(data) or record.get("bytes") != len(data):
            raise ExportError(
                f"{path} is corrupted or was changed: its SHA-256 is {sha256(data)[:16]}..., "
                f"{METADATA} records {str(record.get('sha256'))[:16]}... "
                f"({len(data)} bytes, recorded {record.get('bytes')})"
            )
        contents[name] = data
    return contents


def _load_weights(net: nn.Module, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """``net.load_state_dict(tensors)``, with an error naming every mismatch."""

    expected = {k: v.shape for k, v in net.state_dict().items()}
    problems = state_dict_problems(expected, tensors)
    if problems:
        raise ExportError(
            f"{path} does not fit the network described by its spec: " + "; ".join(problems)
        )
    net.load_state_dict(dict(tensors))


def load_exported(
    path: PathLike, *, features_only: bool = False, out_indices: Sequence[int] = DEFAULT_OUT_INDICES
) -> nn.Module:
    """The exported network in eval mode, rebuilt from ``spec.json`` and
    ``model.safetensors``; ``path`` is the export directory or a file in it. Every file
    is first checked against the hashes ``metadata.json`` records (a folder without it,
    or with a file changed, missing or cut short, is refused). Needs no supernet and
    executes nothing from the files. With ``features_only``, the network up to its last
    feature map, returning the maps ``out_indices`` name (see
    :mod:`onceforall.models.features`)."""
    path = Path(path)
    directory = path.parent if path.is_file() else path
    if not directory.is_dir():
        raise InputNotFoundError(f"{directory} is not a directory (expected an export directory)")
    safetensors_torch = require("safetensors.torch", "loading the weights")
    files = _verified_files(directory)
    weights_path = directory / WEIGHTS
    try:
        tensors = safetensors_torch.load(files[WEIGHTS])
    except Exception as exc:  # SafetensorError and friends: truncated, garbled header
        raise ExportError(
            f"{weights_path} is not a readable safetensors file (corrupted or truncated?): {exc}"
        ) from exc
    spec_path = directory / SPEC
    spec = _json_from(files[SPEC], spec_path)
    try:
        net = build_subnet(spec)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ExportError(f"cannot rebuild the network from {spec_path}: {exc}") from exc
    space = getattr(getattr(net, "config", None), "space", None)
    if ARCH in files and space is not None:
        arch_path = directory / ARCH
        try:
            written = space.canonical(_json_from(files[ARCH], arch_path))
        except ValueError as exc:
            raise ExportError(f"{arch_path}: {exc}") from exc
        if written != space.canonical(net.arch):
            raise ExportError(f"{arch_path} describes another arch than {SPEC}: {written}")
    _load_weights(net, tensors, weights_path)
    return features_of(net.eval(), out_indices) if features_only else net.eval()
