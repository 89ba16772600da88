"""Profile sub-networks of a supernet (arch, MACs, parameters, measured latency) and the
tables the commands print."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tqdm.auto import tqdm

from ..arch import ArchValue, Space
from ..latency.measure import measure_latency
from ..models import Supernet

__all__ = [
    "SubnetProfile",
    "arch_summary",
    "format_runtimes",
    "format_table",
    "profile_subnets",
    "spread_archs",
]


@dataclass(frozen=True)
class SubnetProfile:
    arch: ArchValue
    macs: int
    params: int
    latency_ms: float | None


def spread_archs(supernet: Supernet, num_random: int = 3, seed: int = 0) -> list[ArchValue]:
    """Smallest, some random and the largest sub-network, ordered by MACs."""
    space = supernet.space
    rng = random.Random(seed)
    archs = {space.smallest(), space.largest()}
    while len(archs) < num_random + 2:
        archs.add(space.canonical(space.sample(rng)))
    return sorted(archs, key=supernet.macs)


def profile_subnets(
    supernet: Supernet,
    archs: Iterable[ArchValue],
    *,
    latency: bool = True,
    batch_size: int = 1,
    threads: int | None = None,
    repeats: int = 20,
    progress: bool = True,
) -> list[SubnetProfile]:
    """Extract each arch and report its MACs, parameters and (optionally) measured
    eval-mode latency on the CPU at the arch's resolution."""
    rows = []
    archs = list(archs)
    for arch in tqdm(archs, desc="profiling sub-networks", disable=not progress, leave=False):
        arch = supernet.parse_arch(arch)
        ms = None
        if latency:
            subnet = supernet.extract(arch)
            stats = measure_latency(
                subnet, arch.r, batch_size=batch_size, threads=threads, repeats=repeats
            )
            ms = stats.median_ms
        rows.append(SubnetProfile(arch, supernet.macs(arch), supernet.params(arch), ms))
    return rows


def arch_summary(space: Space, arch: ArchValue) -> str:
    """A compact one-line description of ``arch`` (``space.summary``), as the tables of
    ``ofa profile``, ``search``, ``specialize`` and ``run`` print it."""
    return space.summary(arch)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with right-aligned numeric columns."""
    text = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in text) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    out = [line(text[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in text[1:]]
    return "\n".join(out)


def format_runtimes(exports: Sequence[Path]) -> str | None:
    """Per export, each runtime model file's latency on this CPU and test top-1 (from its
    ``metadata.json``), one line per export; None when no export holds one."""
    rows, names = [], []
    for folder in exports:
        runtimes = json.loads((Path(folder) / "metadata.json").read_text()).get("runtimes") or {}
        rows.append((Path(folder).name, runtimes))
        names += [name for name in runtimes if name not in names]
    if not names:
        return None
    headers = ["export"]
    for name in names:
        headers += [f"{name} ms", f"{name} top-1"]
    lines = []
    for folder, runtimes in rows:
        line = [folder]
        for name in names:
            record = runtimes.get(name)
            top1 = None if record is None else record.get("top1")
            line.append("-" if record is None else f"{record['latency_ms']:.2f}")
            line.append("-" if top1 is None else f"{top1:.2f}")
        lines.append(tuple(line))
    return format_table(tuple(headers), lines)
