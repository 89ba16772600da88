"""The latency steps: a table timed on this device (``ofa latency-table``), a bundle for
another device (``ofa latency-bundle``) and the table its results make
(``ofa latency-table --from-bundle``).

A table records no supernet digest: it times the blocks' shapes, which the weights do
not change, and it is checked against the supernet's blocks when it is read. A bundle's
manifest is kept in the run (``RUN/latency_bundles/``), so that its results can be told
from those of any other bundle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..latency.bundle import BundleInfo, build_bundle, register_bundle, table_from_results
from ..latency.table import LatencyTable
from ..models import Supernet
from ..storage.atomic import check_file_target
from ..storage.run_guard import lock_beside, run_lock
from ..storage.run_layout import RunLayout

__all__ = [
    "LatencyTableResult",
    "latency_bundle_step",
    "latency_table_from_bundle_step",
    "latency_table_step",
]


@dataclass
class LatencyTableResult:
    """The latency table, where it is, and whether an existing file was reused as is."""

    table: LatencyTable
    path: Path
    reused: bool


def latency_table_step(
    supernet: Supernet,
    out: str | os.PathLike,
    *,
    reuse: bool = False,
    extend: bool = False,
    backend: str = "torch",
    threads: int | None = None,
    batch_size: int = 1,
    resolutions: Sequence[int] | None = None,
    repeats: int = 30,
    progress: bool = True,
    run: RunLayout | None = None,
) -> LatencyTableResult:
    """Time ``supernet``'s blocks on this device and save the table to ``out``, holding
    the lock of the ``run`` it belongs to (else one beside ``out``). With ``reuse`` a
    table already at ``out`` is loaded as it is; with ``extend`` only what it lacks is
    timed."""
    check_file_target(out)  # now, not after the timing
    with run_lock(run.root) if run is not None else lock_beside(out):
        return _latency_table(
            supernet,
            Path(out),
            reuse,
            extend,
            backend,
            threads,
            batch_size,
            resolutions,
            repeats,
            progress,
        )


def _latency_table(
    supernet: Supernet,
    path: Path,
    reuse: bool,
    extend: bool,
    backend: str,
    threads: int | None,
    batch_size: int,
    resolutions: Sequence[int] | None,
    repeats: int,
    progress: bool,
) -> LatencyTableResult:
    if reuse and path.is_file():
        return LatencyTableResult(LatencyTable.load(path, supernet), path, True)
    existing = LatencyTable.load(path, supernet) if extend and path.is_file() else None
    table = LatencyTable.build(
        supernet,
        backend=backend,
        threads=threads,
        batch_size=batch_size,
        resolutions=resolutions,
        repeats=repeats,
        existing=existing,
        progress=progress,
    )
    table.save(path)
    return LatencyTableResult(table, path, False)


def latency_bundle_step(
    supernet: Supernet,
    out: str | os.PathLike,
    run: RunLayout,
    *,
    backend: str = "onnxruntime",
    resolutions: Sequence[int] | None = None,
    batch_size: int = 1,
    repeats: int = 30,
    calibration_archs: int = 12,
    progress: bool = True,
) -> BundleInfo:
    """Write the latency bundle of ``run``'s supernet to ``out`` and keep its manifest in
    the run, holding the run's lock."""
    check_file_target(out)  # now, not after the export
    with run_lock(run.root):
        info = build_bundle(
            supernet,
            out,
            backend=backend,
            resolutions=resolutions,
            batch_size=batch_size,
            repeats=repeats,
            calibration_archs=calibration_archs,
            progress=progress,
        )
        register_bundle(run.latency_bundles, info)
        return info


def latency_table_from_bundle_step(
    supernet: Supernet,
    results: str | os.PathLike,
    run: RunLayout,
    out: str | os.PathLike | None = None,
    *,
    statistic: str = "median",
) -> LatencyTableResult:
    """The table of the device that ran one of ``run``'s bundles, from its results file,
    saved to ``out`` (default: the run's latency table)."""
    path = Path(out or run.latency_table)
    check_file_target(path)
    with run_lock(run.root):
        table = table_from_results(supernet, results, run.latency_bundles, statistic=statistic)
        table.save(path)
        return LatencyTableResult(table, path, False)
