"""Per-block latency lookup table (the paper's per-layer table, one entry per block).

A sub-network of an MBConv supernet is a fixed stem, one block per active slot (chosen
by the slot's kernel size and expand ratio) and a fixed head, and a slot's input size
depends only on the resolution. So its latency is predicted as
``fixed_ms(r) + sum(block_ms(r, slot, k, e) for the active slots)``, each term looked up.

Every distinct block shape (channels, kernel, stride, activation, SE, input size) is timed
as a static module with random weights on the target backend; slots of one shape share
the entry. The parts of a resolution and a few whole calibration networks are timed in
the same interleaved rounds (each timed run after untimed ones, to reach the steady state
of a network run over and over); each keeps the median of its rounds (as
:func:`~onceforall.latency.measure.measure_latency` reports) or, with ``statistic="min"``, its best
round, which ignores preemption by other processes on a shared machine.

A block timed alone does not take the time it takes inside a network (its weights stay
in the core's cache, each call pays its own overhead), so a calibration model is fitted to
the whole networks: a scale, an overhead plus a scale, or either plus a cost per parameter
or per part, whichever predicts left-out networks best (:mod:`.calibration`). It is
folded into the entries (``block_ms = scale * ms + ms_per_mparam * mparams +
ms_per_part``, the overhead into ``fixed_ms``), so every term stays a lookup. The
overhead and the cost per part can be negative (the parts, each timed as its own call,
pay a call's fixed cost that the network pays once).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..arch import Arch, ArchLike, MBConvSpace
from ..arch.base import describe_resolutions
from ..errors import check_whole_number
from ..models.mbconv import OFAMBConvNet
from ..storage.atomic import write_text_atomic
from . import parts as lp
from . import table_file
from .backends import get_backend
from .base import LatencyTableError, MissingResolutionError
from .calibration import fit_calibration
from .measure import (
    backend_versions,
    device_description,
    make_runner,
    measure_latency,
    time_interleaved,
    timing_scope,
)

__all__ = ["LatencyTable", "LatencyTableError"]

STATISTICS = {"median": statistics.median, "min": min}  # of the timed rounds


@dataclass
class LatencyTable:
    """Measured per-block latencies of one supernet on one backend and device.

    Build with :meth:`build`, query with :meth:`predict`, :meth:`block_ms` and
    :meth:`fixed_ms`, persist with :meth:`save` / :meth:`load`. ``entries`` holds the raw
    (uncalibrated) ms and the parameters (M) of every block shape, stem and head;
    ``calibration`` the timed whole networks; ``calibration_error`` the leave-one-out
    mean relative error of the fitted model on them."""

    supernet_name: str | None
    fingerprint: dict[str, Any]
    backend: str
    batch_size: int
    threads: int  # intra-op threads; 0: ONNX Runtime's default
    statistic: str  # of the timed rounds: "median" (as measure_latency) or "min"
    device: str
    device_description: str
    versions: dict[str, str]
    resolutions: tuple[int, ...] = ()
    entries: dict[str, tuple[float, float]] = field(default_factory=dict)
    index: dict[tuple[int, int, int, int], str] = field(default_factory=dict)
    calibration: list[tuple[Arch, float]] = field(default_factory=list)
    overhead_ms: float = 0.0
    scale: float = 1.0
    ms_per_mparam: float = 0.0
    ms_per_part: float = 0.0  # per block, stem and head: each part's own call, refunded
    calibration_error: float = float("nan")
    build_seconds: float = 0.0
    bundle_sha256: str | None = None  # timed elsewhere, by this bundle's runner
    _space: MBConvSpace | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def space(self) -> MBConvSpace:
        """The supernet's space restricted to the resolutions the table covers."""
        if self._space is None or self._space.resolutions != tuple(sorted(self.resolutions)):
            fp = self.fingerprint
            self._space = MBConvSpace(
                kernel_sizes=tuple(fp["kernel_sizes"]),
                expand_ratios=tuple(fp["expand_ratios"]),
                depths=tuple(fp["depths"]),
                stage_max_depths=tuple(s["max_depth"] for s in fp["stages"]),
                resolutions=self.resolutions,
            )
        return self._space

    # ------------------------------------------------------------------ queries
    @property
    def measurable_here(self) -> bool:
        """Whether this machine is the table's device (specialisation then re-measures):
        not for a table timed on another device from a bundle."""
        return self.bundle_sha256 is None

    def describe(self) -> str:
        """One line: what the table was timed with and on."""
        where = f" by latency bundle {self.bundle_sha256[:12]}" if self.bundle_sha256 else ""
        return (
            f"measured with {self.backend} on {self.device_description}{where} (batch "
            f"{self.batch_size}, {self.statistic} of timed rounds), resolutions "
            f"{describe_resolutions(self.resolutions)}"
        )

    def measure_ms(self, model: nn.Module, resolution: int, repeats: int) -> float:
        """Median milliseconds of ``model`` on this machine, timed as the table was."""
        return measure_latency(
            model,
            resolution,
            backend=self.backend,
            batch_size=self.batch_size,
            device=self.device,
            threads=self.threads or None,
            repeats=repeats,
        ).median_ms

    def _value(self, key: str) -> float:
        ms, mparams = self.entries[key]
        return self.scale * ms + self.ms_per_mparam * mparams + self.ms_per_part

    def block_ms(self, resolution: int, slot: int, kernel_size: int, expand_ratio: int) -> float:
        """Calibrated milliseconds of block ``slot`` with (k, e) at ``resolution``."""
        key = self.index.get((resolution, slot, kernel_size, expand_ratio))
        if key is None:
            self._check_resolution(resolution)
            raise KeyError(f"no entry for slot {slot}, k={kernel_size}, e={expand_ratio}")
        return self._value(key)

    def fixed_ms(self, resolution: int) -> float:
        """Calibrated milliseconds of what every sub-network at ``resolution`` runs (stem,
        first block, head) plus the fitted per-network overhead."""
        self._check_resolution(resolution)
        stem, head = self._value(f"stem@{resolution}"), self._value(f"head@{resolution}")
        return stem + head + self.overhead_ms

    def predict(self, arch: ArchLike) -> float:
        """Predicted milliseconds of ``arch`` on this table's backend and device (the
        median of repeated runs, ``LatencyStats.median_ms``, or with a ``statistic="min"``
        table the best, ``LatencyStats.min_ms``)."""
        arch = self._parse(arch)
        blocks = (
            self.block_ms(arch.r, slot, arch.ks[slot], arch.e[slot])
            for slot in self.space.active_slots(arch)
        )
        return self.fixed_ms(arch.r) + sum(blocks)

    def features(self, arch: ArchLike) -> tuple[float, float, int]:
        """Uncalibrated sums over the parts of ``arch``: measured ms, parameters (M), and
        the number of parts (blocks, stem and head)."""
        arch = self._parse(arch)
        keys = [f"stem@{arch.r}", f"head@{arch.r}"] + [
            self.index[(arch.r, slot, arch.ks[slot], arch.e[slot])]
            for slot in self.space.active_slots(arch)
        ]
        ms = sum(self.entries[k][0] for k in keys)
        return ms, sum(self.entries[k][1] for k in keys), len(keys)

    def feature_rows(self, archs: Iterable[ArchLike]) -> np.ndarray:
        """One row per arch: 1 and its :meth:`features`, as the calibration's models
        (:data:`~onceforall.latency.calibration.TERMS`) take them."""
        return np.array([(1.0, *self.features(a)) for a in archs])

    def calibrate(self) -> None:
        """Fit the calibration model to the timed whole networks."""
        if self.calibration:
            rows = self.feature_rows(a for a, _ in self.calibration)
            fit = fit_calibration(rows, np.array([ms for _, ms in self.calibration]))
            self.overhead_ms, self.scale = fit.overhead_ms, fit.scale
            self.ms_per_mparam, self.ms_per_part = fit.ms_per_mparam, fit.ms_per_part
            self.calibration_error = fit.error

    def _parse(self, arch: ArchLike) -> Arch:
        if isinstance(arch, self.space.arch_type):
            self._check_resolution(arch.r)
        return self.space.parse(arch)

    def _check_resolution(self, resolution: int) -> None:
        if resolution not in self.resolutions:
            raise MissingResolutionError(
                f"the latency table has no entries for resolution {resolution} (it covers "
                f"{', '.join(map(str, self.resolutions))}); add them with "
                "table.extend(supernet, [resolutions]) or LatencyTable.build(..., existing=table)"
            )

    def check_compatible(self, supernet: OFAMBConvNet, source: str = "the table") -> None:
        """Raise :class:`LatencyTableError` unless ``supernet`` has the block, stem and
        head shapes the table was built for."""
        theirs = lp.fingerprint(supernet)
        ours = self.fingerprint
        if theirs == ours:
            return
        diffs = [
            f"{key} (table: {ours.get(key)!r}, supernet: {theirs.get(key)!r})"
            for key in sorted(set(theirs) | set(ours))
            if theirs.get(key) != ours.get(key)
        ]
        raise LatencyTableError(
            f"{source} was built for another supernet ({self.supernet_name or 'unnamed'}): it "
            f"differs from {getattr(supernet, 'name', 'this supernet')} in {'; '.join(diffs)}. "
            "Build a table for this supernet with LatencyTable.build."
        )

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        supernet: OFAMBConvNet,
        *,
        backend: str = "torch",
        batch_size: int = 1,
        device: str | torch.device = "cpu",
        threads: int | None = None,
        resolutions: Iterable[int] | None = None,
        repeats: int = 30,
        warmup: int = 3,
        calibration_archs: int = 12,
        statistic: str = "median",
        existing: LatencyTable | None = None,
        progress: bool = True,
    ) -> LatencyTable:
        """Time every block shape, stem and head of ``supernet`` at ``resolutions``
        (default: the supernet's), ``statistic`` of ``repeats`` interleaved rounds, with
        ``calibration_archs`` whole networks per resolution (smallest, largest, seeded
        random ones) in the same rounds, then fit the calibration. With ``existing`` (a
        table timed alike), only what it lacks is timed."""
        runtime = get_backend(backend)
        check_whole_number("repeats", repeats, 1)
        check_whole_number("calibration_archs", calibration_archs, 0)
        check_whole_number("batch_size", batch_size, 1)
        if threads is not None:
            check_whole_number("threads", threads, 1)
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, not {statistic!r}")
        lp.check_per_block(supernet)
        device = torch.device(device)
        threads = runtime.threads_for(threads)
        table = cls(
            supernet_name=getattr(supernet, "name", None),
            fingerprint=lp.fingerprint(supernet),
            backend=backend,
            batch_size=batch_size,
            threads=threads,
            statistic=statistic,
            device=str(device),
            device_description=device_description(device),
            versions=backend_versions(backend),
        )
        if existing is not None:
            existing.check_compatible(supernet, "the existing table")
            table._adopt(existing)
        start = time.perf_counter()
        space = supernet.space
        n, d = space.num_slots, space.largest().d
        subnets = {
            (k, e): lp.static_net(supernet, Arch((k,) * n, (e,) * n, d, 0))
            for k in space.kernel_sizes
            for e in space.expand_ratios
        }
        todo = sorted(set(int(r) for r in (resolutions or space.resolutions)))
        todo = [r for r in todo if r not in table.resolutions]
        with tqdm(total=len(todo) * repeats, desc="latency table", disable=not progress) as bar:
            for r in todo:
                table._measure(supernet, r, subnets, repeats, warmup, calibration_archs, bar)
        table.build_seconds += time.perf_counter() - start
        table.calibrate()
        return table

    def extend(
        self, supernet: OFAMBConvNet, resolutions: Iterable[int], **kwargs: Any
    ) -> LatencyTable:
        """A new table that also covers ``resolutions``, timed like this one (only the
        missing entries are timed; the calibration is refitted on all networks)."""
        return LatencyTable.build(
            supernet,
            backend=self.backend,
            batch_size=self.batch_size,
            device=self.device,
            threads=self.threads or None,
            statistic=self.statistic,
            resolutions=resolutions,
            existing=self,
            **kwargs,
        )

    def _adopt(self, existing: LatencyTable) -> None:
        """Reuse the entries of ``existing`` after checking it was timed alike."""
        fields = ("backend", "batch_size", "threads", "statistic", "device_description")
        mine = tuple(getattr(self, f) for f in fields)
        theirs = tuple(getattr(existing, f) for f in fields)
        if mine != theirs:
            raise LatencyTableError(
                f"the existing table was timed differently ({', '.join(fields)}): {theirs}, "
                f"now {mine}; build a new table instead"
            )
        self.resolutions = existing.resolutions
        self.entries.update(existing.entries)
        self.index.update(existing.index)
        self.calibration.extend(existing.calibration)
        self.build_seconds = existing.build_seconds

    def _measure(
        self,
        supernet: OFAMBConvNet,
        r: int,
        subnets: dict[tuple[int, int], nn.Module],
        repeats: int,
        warmup: int,
        calibration_archs: int,
        bar: tqdm,
    ) -> None:
        """Time the missing parts and the calibration networks of resolution ``r`` in
        the same interleaved rounds."""
        b, threads = self.batch_size, self.threads or None
        index, parts = lp.timed_parts(supernet, r, b, subnets)
        parts = [p for p in parts if p.key not in self.entries]
        archs = lp.calibration_archs(supernet.space, r, calibration_archs)
        nets = [lp.TimedPart(str(a), lp.static_net(supernet, a), (b, 3, r, r)) for a in archs]
        bar.set_postfix_str(f"r={r}: preparing {len(parts) + len(nets)} models")
        runners = [
            make_runner(
                m.module, m.input_shape, backend=self.backend, device=self.device, threads=threads
            )
            for m in parts + nets
        ]
        bar.set_postfix_str(f"r={r}: timing {len(runners)} models")
        with timing_scope(self.backend, threads):
            samples = time_interleaved(runners, repeats, warmup=warmup, seed=r, on_round=bar.update)
        ms = [STATISTICS[self.statistic](s) for s in samples]
        self.entries.update({p.key: (t, p.mparams) for p, t in zip(parts, ms)})
        self.calibration += list(zip(archs, ms[len(parts) :]))
        self.index.update({(r, *slot_k_e): key for slot_k_e, key in index.items()})
        self.resolutions = tuple(sorted({*self.resolutions, r}))

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write the table as JSON (:mod:`.table_file`): raw entries, calibration, what it
        was timed on."""
        return write_text_atomic(path, json.dumps(table_file.to_record(self), indent=1))

    @classmethod
    def load(cls, path: str | Path, supernet: OFAMBConvNet | None = None) -> LatencyTable:
        """Read a table written by :meth:`save` (or by a version that wrote format 1);
        with ``supernet``, refuse one built for a supernet of other shapes
        (:class:`LatencyTableError`)."""
        record = table_file.read_record(path)
        try:
            table = cls(**table_file.fields_of(record))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
            raise LatencyTableError(f"{path} is a damaged latency table ({problem})") from None
        if supernet is not None:
            table.check_compatible(supernet, f"latency table {path}")
        return table
