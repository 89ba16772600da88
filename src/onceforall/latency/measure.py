"""Latency measured on the device at hand: warm-up, then the median of repeated runs.

The backends (:mod:`.backends`: PyTorch eager on CPU or CUDA, ONNX Runtime in FP32 and
INT8 on the CPU) prepare a network to be called; this module times it. A :class:`Runner`
is one model prepared for one backend; :func:`measure_latency` times one, and the latency
table times hundreds of them interleaved (see :mod:`onceforall.latency.table`).
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import check_whole_number
from .backends import BACKENDS, Backend, get_backend, torch_threads

__all__ = [
    "BACKENDS",
    "LatencyStats",
    "Runner",
    "backend_versions",
    "device_description",
    "make_runner",
    "measure_latency",
    "time_interleaved",
    "timing_scope",
    "torch_threads",
]


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per forward pass of one batch: median, best run and percentiles of
    the repeats. ``threads`` is the intra-op thread count (0: the backend's default, for
    ONNX Runtime one per physical core)."""

    median_ms: float
    min_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    batch_size: int
    device: str
    threads: int
    backend: str = "torch"


def backend_versions(backend: str | Backend) -> dict[str, str]:
    """Versions of the software that produced a timing (saved with tables and results)."""
    return get_backend(backend).versions()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_description(device: str | torch.device = "cpu") -> str:
    """One line naming the machine a timing comes from: CPU model and core count (or the
    CUDA device), OS and torch version. Saved with latency tables so that a table is
    never mistaken for one of another device."""
    device = torch.device(device)
    cpu = f"{_cpu_model()}, {os.cpu_count()} logical cores"
    parts = [cpu, f"{platform.system()} {platform.machine()}", f"torch {torch.__version__}"]
    if device.type == "cuda":
        parts.insert(0, f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})")
    return "; ".join(parts)


class Runner:
    """One model prepared for one backend: calling it runs one forward pass on a fixed
    random input (and waits for the device). Use inside :func:`timing_scope`."""

    def __init__(
        self,
        model: nn.Module | str | os.PathLike,
        input_shape: Sequence[int],
        *,
        backend: str | Backend = "torch",
        device: str | torch.device = "cpu",
        threads: int | None = None,
    ) -> None:
        runtime = get_backend(backend)
        self.device = torch.device(device)
        runtime.check_device(self.device)
        self.backend = runtime.name
        self.input_shape = tuple(int(s) for s in input_shape)
        if isinstance(model, nn.Module):
            prepared = runtime.prepare(model, self.input_shape, device=self.device, threads=threads)
        else:  # a model file of the runtime (an export's model.int8.onnx, say)
            prepared = runtime.prepare_file(Path(model), self.input_shape, threads)
        self._run = prepared.run
        self.threads = prepared.threads

    def __call__(self) -> None:
        self._run()

    def time_ms(self, calls: int = 1) -> float:
        """Milliseconds per call, averaged over ``calls`` back-to-back calls."""
        start = time.perf_counter()
        for _ in range(calls):
            self._run()
        return (time.perf_counter() - start) * 1000 / calls


def make_runner(
    model: nn.Module | str | os.PathLike,
    input_shape: Sequence[int],
    *,
    backend: str | Backend = "torch",
    device: str | torch.device = "cpu",
    threads: int | None = None,
) -> Runner:
    """Prepare ``model`` for timing on ``backend`` (exports it for ONNX Runtime)."""
    return Runner(model, input_shape, backend=backend, device=device, threads=threads)


def timing_scope(backend: str | Backend, threads: int | None) -> AbstractContextManager[Any]:
    """What a backend's runners need around their calls (PyTorch: the thread count and
    inference mode; ONNX Runtime sessions carry their settings themselves)."""
    return get_backend(backend).scope(threads)


def time_interleaved(
    runners: Sequence[Runner],
    rounds: int,
    *,
    warmup: int = 3,
    settle: int = 3,
    seed: int = 0,
    on_round: Callable[[], None] | None = None,
) -> list[list[float]]:
    """Milliseconds of ``rounds`` calls of every runner, one per round in a fresh seeded
    random order, so that background load and drift hit every runner alike.

    Each timed call follows ``settle`` untimed ones: after the other runners have
    evicted its weights and buffers from the caches, a model takes a few calls to reach
    the steady state of a model run over and over (which is what a deployed network is,
    and what :func:`measure_latency` times). Call inside :func:`timing_scope`."""
    for runner in runners:
        for _ in range(warmup):
            runner()
    samples: list[list[float]] = [[] for _ in runners]
    order = list(range(len(runners)))
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for i in order:
            for _ in range(settle):
                runners[i]()
            samples[i].append(runners[i].time_ms())
        if on_round is not None:
            on_round()
    return samples


def measure_latency(
    model: nn.Module | str | os.PathLike,
    resolution: int,
    *,
    backend: str | Backend = "torch",
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 30,
) -> LatencyStats:
    """Time ``model`` in eval mode (or a model file of ``backend``) on a random
    ``(batch, 3, r, r)`` input: ``warmup`` untimed runs, then the median (and 10th / 90th
    percentiles) of ``repeats`` runs."""
    check_whole_number("repeats", repeats, 1)
    check_whole_number("batch_size", batch_size, 1)
    runner = make_runner(
        model,
        (batch_size, 3, resolution, resolution),
        backend=backend,
        device=device,
        threads=threads,
    )
    with timing_scope(backend, threads):
        for _ in range(warmup):
            runner()
        times = sorted(runner.time_ms() for _ in range(repeats))
    return LatencyStats(
        median_ms=statistics.median(times),
        min_ms=times[0],
        p10_ms=times[int(0.1 * (len(times) - 1))],
        p90_ms=times[int(0.9 * (len(times) - 1))],
        repeats=repeats,
        batch_size=batch_size,
        device=str(runner.device),
        threads=runner.threads,
        backend=runner.backend,
    )
