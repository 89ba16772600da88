"""Latency measured on the device at hand: warm-up, then the median of repeated runs."""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

__all__ = ["LatencyStats", "measure_latency", "torch_threads"]


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per forward pass of one batch."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    batch_size: int
    device: str
    threads: int


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Temporarily set PyTorch's intra-op thread count (``None`` leaves it alone)."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    resolution: int,
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 30,
) -> LatencyStats:
    """Time ``model`` in eval mode on a random ``(batch, 3, r, r)`` input."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    device = torch.device(device)
    model = model.eval().to(device)
    x = torch.randn(batch_size, 3, resolution, resolution, device=device)
    times = []
    with torch_threads(threads):
        for _ in range(warmup):
            model(x)
        _sync(device)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            _sync(device)
            times.append((time.perf_counter() - start) * 1000)
        used_threads = torch.get_num_threads()
    times.sort()
    return LatencyStats(
        median_ms=statistics.median(times),
        p10_ms=times[int(0.1 * (len(times) - 1))],
        p90_ms=times[int(0.9 * (len(times) - 1))],
        repeats=repeats,
        batch_size=batch_size,
        device=str(device),
        threads=used_threads,
    )
