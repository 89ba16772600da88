"""How long building a latency table will take here, from a probe that prepares and
times a few of the table's models with the table's backend (a second or two).

A table's time is dominated by per-model work that does not scale with MACs (exporting
each block to ONNX, per-call overheads of tiny models), so it is measured rather than
derived from the training speed (see :mod:`onceforall.training.forecast`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..models import Supernet
from . import parts as lp
from .measure import make_runner, timing_scope

__all__ = ["NetworkProbe", "TableForecast", "probe_network", "probe_table_time"]

PROBE_CALLS = 10
SETTLE = 3  # untimed calls before each timed one (time_interleaved's default)


@dataclass(frozen=True)
class NetworkProbe:
    """What one typical sub-network costs here outside its forward passes' MACs."""

    prepare_s: float  # preparing it for the backend (ONNX export and session, if ONNX)
    call_s: float  # one batch-1 call on the backend
    onnx_s: float  # exporting it to ONNX and loading it in ONNX Runtime (0 without them)
    torch_call_s: float  # one batch-1 call in eager PyTorch


def _prepare_and_time(module, shape, backend: str, threads: int | None) -> tuple[float, float]:
    start = time.perf_counter()
    runner = make_runner(module, shape, backend=backend, threads=threads)
    prepare = time.perf_counter() - start
    with timing_scope(backend, threads):
        runner()
        return prepare, runner.time_ms(PROBE_CALLS) / 1000


def probe_network(supernet: Supernet, *, backend: str, threads: int | None) -> NetworkProbe:
    """Prepare and time one typical (random, middle-resolution) sub-network."""
    space = supernet.space
    r = sorted(space.resolutions)[len(space.resolutions) // 2]
    net = lp.static_net(supernet, lp.calibration_archs(space, r, 3)[-1])
    shape = (1, 3, r, r)
    prepare, call = _prepare_and_time(net, shape, backend, threads)
    torch_call = call if backend == "torch" else _prepare_and_time(net, shape, "torch", threads)[1]
    if backend == "onnxruntime":
        onnx = prepare
    else:
        try:
            onnx = _prepare_and_time(net, shape, "onnxruntime", threads)[0]
        except ImportError:
            onnx = 0.0
    return NetworkProbe(prepare, call, onnx, torch_call)


@dataclass(frozen=True)
class TableForecast:
    models: int  # models to prepare and time (block shapes, stem, head, calibration nets)
    calls: int  # calls to run, warm-up included
    seconds: float  # forecast on this machine


def probe_table_time(
    supernet: Supernet,
    *,
    backend: str,
    threads: int | None,
    repeats: int,
    warmup: int = 3,
    calibration_archs: int = 12,
) -> TableForecast:
    """Forecast :meth:`.LatencyTable.build` with these settings at every resolution of
    ``supernet``: count its models, then prepare and time three block parts and one
    whole network at the middle resolution."""
    space = supernet.space
    subnets = lp.block_subnets(supernet)
    resolutions = sorted(space.resolutions)
    r = resolutions[len(resolutions) // 2]
    _, parts = lp.timed_parts(supernet, r, 1, subnets)  # as many at every resolution
    blocks = len(parts)
    models = (blocks + calibration_archs) * len(resolutions)
    calls_per_model = warmup + repeats * (SETTLE + 1)

    probes = [parts[0], parts[len(parts) // 2], parts[-3]]
    typical = lp.calibration_archs(space, r, 3)[-1]  # a random one, as most of them are
    whole = lp.static_net(supernet, typical)
    timed = [(p.module, p.input_shape) for p in probes] + [(whole, (1, 3, r, r))]
    make_runner(parts[-1].module, parts[-1].input_shape, backend=backend, threads=threads)
    prep, call = [], []  # (the head's runner above took the backend's first-use costs)
    for module, shape in timed:
        prepare, one_call = _prepare_and_time(module, shape, backend, threads)
        prep.append(prepare)
        call.append(one_call)
    block_s = sum(prep[:3]) / 3 + calls_per_model * sum(call[:3]) / 3
    net_s = prep[3] + calls_per_model * call[3]
    seconds = len(resolutions) * (blocks * block_s + calibration_archs * net_s)
    return TableForecast(models, models * calls_per_model, seconds)
