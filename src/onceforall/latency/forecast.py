"""How long building a latency table will take here, from a probe that prepares and
times a few of the table's models with the table's backend (a second or two).

A table's time is dominated by per-model work that does not scale with MACs (exporting
each block to ONNX, per-call overheads of tiny models), so it is measured rather than
derived from the training speed (see :mod:`onceforall.training.forecast`).
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass

from torch import nn

from ..models import Supernet
from . import parts as lp
from .measure import make_runner, timing_scope

__all__ = ["NetworkProbe", "probe_network", "probe_table_time"]

PROBE_CALLS = 10
PROBE_SEED = 0  # the typical network probed: a seeded random arch of the space
SETTLE = 3  # untimed calls before each timed one (time_interleaved's default)


@dataclass(frozen=True)
class NetworkProbe:
    """What one typical sub-network costs here outside its forward passes' MACs."""

    resolution: int  # the middle one of the supernet's, where it was probed
    prepare_s: float  # preparing it for the backend (ONNX export and session, if ONNX)
    call_s: float  # one batch-1 call on the backend
    onnx_s: float  # exporting it to ONNX and loading it in ONNX Runtime (0 without them)
    torch_call_s: float  # one batch-1 call in eager PyTorch


def _prepare_and_time(
    module: nn.Module, shape: tuple[int, ...], backend: str, threads: int | None
) -> tuple[float, float]:
    """Seconds to prepare ``module`` for ``backend``, and seconds per call after one."""
    start = time.perf_counter()
    runner = make_runner(module, shape, backend=backend, threads=threads)
    prepare = time.perf_counter() - start
    with timing_scope(backend, threads):
        runner()
        return prepare, runner.time_ms(PROBE_CALLS) / 1000


def probe_network(supernet: Supernet, *, backend: str, threads: int | None) -> NetworkProbe:
    """Prepare and time one typical (random, middle-resolution) sub-network, after one
    untimed preparation that takes the backend's first-use costs."""
    space = supernet.space
    r = sorted(space.resolutions)[len(space.resolutions) // 2]
    arch = dataclasses.replace(space.sample(random.Random(PROBE_SEED)), r=r)  # any family
    net = supernet.build_subnet(arch).eval()
    shape = (1, 3, r, r)
    make_runner(net, shape, backend=backend, threads=threads)
    prepare, call = _prepare_and_time(net, shape, backend, threads)
    torch_call = call if backend == "torch" else _prepare_and_time(net, shape, "torch", threads)[1]
    if backend == "onnxruntime":
        onnx = prepare
    else:
        try:
            onnx = _prepare_and_time(net, shape, "onnxruntime", threads)[0]
        except ImportError:
            onnx = 0.0
    return NetworkProbe(r, prepare, call, onnx, torch_call)


def probe_table_time(
    supernet: Supernet,
    network: NetworkProbe,
    *,
    backend: str,
    threads: int | None,
    repeats: int,
    warmup: int = 3,
    calibration_archs: int = 12,
) -> float:
    """Forecast seconds of :meth:`.LatencyTable.build` with these settings at every
    resolution of ``supernet``: count its models, prepare and time three block parts at
    the middle resolution, and take the whole networks' cost from ``network``
    (:func:`probe_network`, run first on the same ``backend``)."""
    resolutions = sorted(supernet.space.resolutions)
    _, parts = lp.timed_parts(supernet, network.resolution, 1, lp.block_subnets(supernet))
    calls_per_model = warmup + repeats * (SETTLE + 1)
    probes = [parts[0], parts[len(parts) // 2], parts[-3]]
    timed = [_prepare_and_time(p.module, p.input_shape, backend, threads) for p in probes]
    block_s = sum(prepare + calls_per_model * call for prepare, call in timed) / len(timed)
    net_s = network.prepare_s + calls_per_model * network.call_s
    # As many block parts at every resolution as at the middle one.
    return len(resolutions) * (len(parts) * block_s + calibration_archs * net_s)
