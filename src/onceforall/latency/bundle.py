"""A latency table for a device that cannot run PyTorch: a portable measurement bundle.

:func:`build_bundle` writes one zip file: every model a latency table times (every block
shape, the stem and the head at every resolution, and the calibration networks; the same
parts as :meth:`LatencyTable.build <onceforall.latency.table.LatencyTable.build>`) as
ONNX files in ``models.zip`` (read from there by the runner, never unpacked), a
``manifest.json`` (supernet, space, backend, precision, format version, the
SHA-256 of every file) and ``measure.py``, a stand-alone runner that needs only Python,
numpy and ONNX Runtime (:mod:`onceforall.latency.bundle_runner`). On the device,
``python measure.py --out results.json`` times every model the way the in-process table
does; :func:`table_from_results` turns that file back into a :class:`LatencyTable` of
that device, calibrated as usual, after checking that it comes from a bundle this run
made, is complete and undamaged.

The models carry random weights, as the in-process table's do, but each weight tensor is
one seeded random pattern of 256 values repeated (scaled to the tensor's initial spread):
a float32 kernel takes the same time whatever the values (none are zero, denormal or
special), and the zip compresses such tensors some 50-fold, so a bundle of
OFA-MobileNetV3 at five resolutions is tens of MB instead of gigabytes.

A run remembers the manifests of the bundles it made (``RUN/latency_bundles/``), so
results are matched to their bundle by the manifest's SHA-256.
"""

from __future__ import annotations

import functools
import hashlib
import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..arch import Arch
from ..models.mbconv import OFAMBConvNet
from ..storage.atomic import atomic_file, write_bytes_atomic
from ..storage.onnx_export import export_onnx, require
from . import bundle_runner as runner
from . import parts as lp
from .base import LatencyTableError
from .table import STATISTICS, LatencyTable

__all__ = ["BUNDLE_BACKENDS", "BundleInfo", "build_bundle", "table_from_results"]

BUNDLE_BACKENDS = ("onnxruntime",)  # runtimes a bundle's models are made for
PRECISION = {"onnxruntime": "fp32"}


@dataclass(frozen=True)
class BundleInfo:
    """A bundle written: where, its manifest (and that file's SHA-256), its size."""

    path: Path
    manifest: bytes
    sha256: str
    models: int
    size_bytes: int


def build_bundle(
    supernet: OFAMBConvNet,
    out: str | Path,
    *,
    backend: str = "onnxruntime",
    resolutions: Iterable[int] | None = None,
    batch_size: int = 1,
    calibration_archs: int = 12,
    repeats: int = 30,
    warmup: int = 3,
    progress: bool = True,
) -> BundleInfo:
    """Write the bundle of ``supernet`` at ``resolutions`` (default: the supernet's) to the
    zip file ``out`` (atomically). ``repeats`` and ``warmup`` are the runner's defaults."""
    if backend not in BUNDLE_BACKENDS:
        raise LatencyTableError(
            f"latency bundles are made for {', '.join(BUNDLE_BACKENDS)}, not {backend!r}"
        )
    require("onnx", "a latency bundle (ONNX models)")
    lp.check_per_block(supernet)
    todo = sorted(set(int(r) for r in (resolutions or supernet.space.resolutions)))
    space = supernet.space
    subnets = lp.block_subnets(supernet)
    # id, entry, and the module or what builds it (whole networks are built one at a time)
    planned: list[tuple[str, dict[str, Any], Any]] = []
    groups, calibration = [], []
    timed: set[str] = set()
    index: dict[str, list] = {}
    for r in todo:
        slot_keys, parts = lp.timed_parts(supernet, r, batch_size, subnets)
        names = []
        for part in parts:
            if part.key in timed:  # the same shape at an earlier resolution: timed there
                continue
            timed.add(part.key)
            entry = {"kind": "part", "key": part.key, "mparams": part.mparams}
            names.append(_plan(planned, part.module, part.input_shape, entry))
        for arch in lp.calibration_archs(space, r, calibration_archs):
            entry = {"kind": "calibration", "key": str(arch), "arch": arch.to_dict()}
            build = functools.partial(lp.static_net, supernet, arch)
            name = _plan(planned, build, (batch_size, 3, r, r), entry)
            names.append(name)
            calibration.append({"model": name, "arch": arch.to_dict()})
        groups.append({"resolution": r, "seed": r, "models": names})
        index[str(r)] = [
            [[slot_keys[(s, k, e)] for e in space.expand_ratios] for k in space.kernel_sizes]
            for s in range(space.num_slots)
        ]
    manifest = {
        "format": runner.FORMAT,
        "version": runner.VERSION,
        "created_by": f"onceforall {__version__}",
        "supernet": getattr(supernet, "name", None),
        "fingerprint": lp.fingerprint(supernet),
        "resolutions": todo,
        "backend": backend,
        "precision": PRECISION[backend],
        "batch_size": batch_size,
        "repeats": repeats,
        "warmup": warmup,
        "groups": groups,
        "index": index,
        "calibration": calibration,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="ofa-bundle-") as tmp:
        models_zip = Path(tmp) / runner.MODELS
        with zipfile.ZipFile(models_zip, "w", zipfile.ZIP_DEFLATED) as zf:
            bar = tqdm(planned, desc="latency bundle", unit="model", disable=not progress)
            for name, entry, module in bar:
                path = Path(tmp) / f"{name}.onnx"
                if not isinstance(module, torch.nn.Module):
                    module = module()
                export_onnx(_compressible(module), entry["input_shape"], path)
                entry["file"] = path.name
                entry["sha256"] = _sha256(path)
                manifest["models"][name] = entry
                zf.write(path, entry["file"])
                path.unlink()
        raw = json.dumps(manifest, indent=1).encode("utf-8")
        with atomic_file(out) as file, zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("manifest.json", raw)
            zf.writestr("measure.py", Path(runner.__file__).read_bytes())
            zf.write(models_zip, runner.MODELS, compress_type=zipfile.ZIP_STORED)
    size = Path(out).stat().st_size
    return BundleInfo(Path(out), raw, hashlib.sha256(raw).hexdigest(), len(planned), size)


_PATTERN = 256  # values repeated through each weight tensor (1 KB, well inside deflate's window)


@torch.no_grad()
def _compressible(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every large weight tensor refilled by one repeated random pattern
    of its own spread, and batch norms at their initial state (scale 1, statistics 0 and
    1), so that the exporter's folding of a batch norm into its convolution keeps the
    pattern (see the module docstring)."""
    for child in module.modules():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
            child.reset_parameters()  # also resets the running statistics
    gen = torch.Generator().manual_seed(0)
    pattern = torch.randn(_PATTERN, generator=gen)
    for param in module.parameters():
        if param.dim() >= 2 and param.numel() > _PATTERN:  # conv and linear weights
            std = float(param.std()) or 1.0
            tiled = pattern.repeat(-(-param.numel() // _PATTERN))[: param.numel()]
            param.copy_((tiled * std).view_as(param))
    return module


def _plan(planned: list, module: Any, shape: Iterable[int], entry: dict) -> str:
    name = f"m{len(planned):04d}"
    entry["input_shape"] = [int(s) for s in shape]
    planned.append((name, entry, module))
    return name


def _sha256(path: Path) -> str:
    return runner.sha256_file(str(path))


def register_bundle(folder: str | Path, info: BundleInfo) -> Path:
    """Keep the manifest of a bundle in ``folder`` (a run's ``latency_bundles/``), so that
    its results can be told from those of any other bundle."""
    return write_bytes_atomic(Path(folder) / f"{info.sha256}.json", info.manifest)


def table_from_results(
    supernet: OFAMBConvNet,
    results_path: str | Path,
    bundles: str | Path,
    *,
    statistic: str = "median",
) -> LatencyTable:
    """The latency table of the device that ran a bundle, from the runner's results file
    (``results_path``): refused unless it is undamaged and complete, and comes from a
    bundle kept in ``bundles`` (a run's ``latency_bundles/``) for ``supernet``."""
    if statistic not in STATISTICS:
        raise LatencyTableError(f"statistic must be one of {', '.join(STATISTICS)}")
    path = Path(results_path)
    if not path.is_file():
        raise LatencyTableError(f"no results file at {path} (measure.py --out writes one)")
    try:
        payload = runner.read_results(str(path))
    except runner.BundleError as exc:
        raise LatencyTableError(str(exc)) from None
    if payload.get("version") != runner.VERSION:
        raise LatencyTableError(
            f"{path} is a version {payload.get('version')} results file; this onceforall "
            f"reads version {runner.VERSION}"
        )
    sha = payload.get("bundle_sha256")
    kept = Path(bundles) / f"{sha}.json"
    if not isinstance(sha, str) or not kept.is_file():
        made = sorted(p.stem[:12] for p in Path(bundles).glob("*.json"))
        raise LatencyTableError(
            f"{path} holds results of a bundle this run did not make (manifest SHA-256 "
            f"{str(sha)[:12]}...; this run made {', '.join(made) or 'none'})"
        )
    manifest = json.loads(kept.read_bytes())
    if payload.get("manifest") != manifest:
        raise LatencyTableError(f"{path} names bundle {sha[:12]}... but lists other models")
    samples = payload["samples"]
    if not payload.get("complete"):
        repeats = payload["settings"]["repeats"]
        timed = sum(len(samples.get(n, [])) >= repeats for n in manifest["models"])
        raise LatencyTableError(
            f"{path} is incomplete: {timed} of {len(manifest['models'])} models timed; run "
            "measure.py again with the same --out to finish"
        )
    for name, model in manifest["models"].items():
        if not samples.get(name):
            raise LatencyTableError(
                f"{path} has no timing of {model['file']} ({model['kind']} {model['key']})"
            )
    table = _table(manifest, payload, sha, statistic)
    table.check_compatible(supernet, f"results file {path}")
    return table


def _table(manifest: dict, payload: dict, sha: str, statistic: str) -> LatencyTable:
    """The table the results of a checked bundle make, calibrated."""
    pick = STATISTICS[statistic]
    ms = {name: pick(values) for name, values in payload["samples"].items()}
    device = payload["device"]
    table = LatencyTable(
        supernet_name=manifest["supernet"],
        fingerprint=manifest["fingerprint"],
        backend=manifest["backend"],
        batch_size=manifest["batch_size"],
        threads=payload["settings"]["threads"],
        statistic=statistic,
        device="cpu",
        device_description=f"{device['name']}: {device['description']}",
        versions={k: str(device[k]) for k in ("onnxruntime", "numpy", "python") if k in device},
        resolutions=tuple(manifest["resolutions"]),
        bundle_sha256=sha,
    )
    fp = manifest["fingerprint"]
    for name, model in manifest["models"].items():
        if model["kind"] == "part":
            table.entries[model["key"]] = (ms[name], model["mparams"])
    for r, slots in manifest["index"].items():
        for s, per_k in enumerate(slots):
            for k, per_e in zip(fp["kernel_sizes"], per_k):
                for e, key in zip(fp["expand_ratios"], per_e):
                    table.index[(int(r), s, k, e)] = key
    for row in manifest["calibration"]:
        arch = Arch(*(tuple(row["arch"][key]) for key in ("ks", "e", "d")), row["arch"]["r"][0])
        table.calibration.append((arch, ms[row["model"]]))
    table.build_seconds = float(payload.get("seconds", 0.0))
    table.calibrate()
    return table
