"""How well does the per-block latency table predict whole-network latency?

Builds a table for a supernet, then times held-out random sub-networks whole (extracted,
``measure_latency`` with the same backend and threads, as a user would) in two passes,
and prints the absolute percentage error of the table's predictions against the mean of
the passes; the gap between the passes is the noise floor of the measurement itself.
``--statistic`` (median, or min: the best run) is used for the table and the reference.

``--reference interleaved`` (the default) times the held-out networks the way the table
times its parts: two fresh runners per network (pass 1 and pass 2) and a fresh runner for
each of the table's calibration networks, all in the same rounds, one call of each per
round in a random order. The two passes then differ only by the measurement's own noise,
not by the host's speed drifting between them; the calibration networks, timed once at
the build and again now, measure that drift, and the table's error is also reported
against the reference divided by it (the table re-anchored to the host's speed of the
moment). ``standalone`` times each network on its own with ``measure_latency``, its
repeats back to back, one pass after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np

from onceforall import Arch, create_supernet
from onceforall.latency.measure import (
    BACKENDS,
    device_description,
    make_runner,
    measure_latency,
    time_interleaved,
    timing_scope,
)
from onceforall.latency.table import STATISTICS, LatencyTable

EVAL_SEED = 2024  # held-out archs; the table's calibration archs use another seed


def held_out_archs(supernet, table: LatencyTable, count: int) -> list[Arch]:
    """Seeded random archs at the table's resolutions, none of its calibration nets."""
    rng = random.Random(EVAL_SEED)
    seen = {supernet.space.canonical(a) for a, _ in table.calibration}
    archs: list[Arch] = []
    while len(archs) < count:
        a = supernet.space.sample(rng)
        a = Arch(a.ks, a.e, a.d, rng.choice(table.resolutions))
        if supernet.space.canonical(a) not in seen:
            seen.add(supernet.space.canonical(a))
            archs.append(a)
    return archs


def time_standalone(subnets, archs, args) -> list[float]:
    """Each network on its own, its repeats back to back (what ``measure_latency`` does)."""
    return [
        getattr(
            measure_latency(
                m, a.r, backend=args.backend, threads=args.threads, repeats=args.eval_repeats
            ),
            f"{args.statistic}_ms",
        )
        for m, a in zip(subnets, archs)
    ]


def time_in_rounds(net, subnets, archs, table: LatencyTable, args) -> tuple[list, list, float]:
    """Both passes and the table's calibration networks in the same interleaved rounds:
    (pass 1, pass 2, drift), drift being the calibration networks' median ratio of their
    time now to their time at the build."""
    threads = args.threads or None
    anchors = [net.extract(a).eval() for a, _ in table.calibration]
    models = [*subnets, *subnets, *anchors]
    shapes = [a.r for a in archs] * 2 + [a.r for a, _ in table.calibration]
    runners = [
        make_runner(m, (1, 3, r, r), backend=args.backend, threads=threads)
        for m, r in zip(models, shapes)
    ]
    with timing_scope(args.backend, threads):
        samples = time_interleaved(runners, args.eval_repeats, seed=1)
    ms = [STATISTICS[args.statistic](s) for s in samples]
    n = len(subnets)
    then = [t for _, t in table.calibration]
    drift = float(np.median(np.array(ms[2 * n :]) / np.array(then))) if then else 1.0
    return ms[:n], ms[n : 2 * n], drift


def load_text() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def report(name: str, gap: np.ndarray, measured: np.ndarray) -> None:
    err = np.abs(gap) / measured * 100
    print(
        f"  abs % error, {name:27s} median {np.median(err):5.1f}  "
        f"p90 {np.percentile(err, 90):5.1f}  max {err.max():5.1f}  "
        f"within 10 %: {np.mean(err <= 10) * 100:3.0f} % of networks"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supernet", default="ofa_mbv3_w1.0")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[24, 28, 32])
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--archs", type=int, default=50, help="held-out networks")
    parser.add_argument("--repeats", type=int, default=30, help="table rounds")
    parser.add_argument("--eval-repeats", type=int, default=30, help="runs per network")
    parser.add_argument("--statistic", choices=tuple(STATISTICS), default="median")
    parser.add_argument(
        "--reference",
        choices=("interleaved", "standalone"),
        default="interleaved",
        help="how the held-out networks are timed whole",
    )
    parser.add_argument(
        "--calibration-archs", type=int, default=12, help="whole networks timed per resolution"
    )
    parser.add_argument("--save", help="write the table to this JSON file")
    parser.add_argument("--json", help="write per-network predictions and timings here")
    args = parser.parse_args()

    net = create_supernet(args.supernet, num_classes=args.num_classes, resolutions=args.resolutions)
    print(device_description())
    print(f"{args.backend}, {args.threads} thread(s); before the build: {load_text()}")
    table = LatencyTable.build(
        net,
        backend=args.backend,
        threads=args.threads,
        resolutions=args.resolutions,
        repeats=args.repeats,
        statistic=args.statistic,
        calibration_archs=args.calibration_archs,
    )
    print(
        f"table: {len(table.entries)} entries, built in {table.build_seconds:.1f} s; fit on "
        f"{len(table.calibration)} networks: overhead {table.overhead_ms:.3f} ms, scale "
        f"{table.scale:.3f}, {table.ms_per_mparam:.4f} ms per M params, "
        f"{table.ms_per_part:+.4f} ms per part; leave-one-out "
        f"error {table.calibration_error * 100:.1f} %"
    )
    if args.save:
        table.save(args.save)

    archs = held_out_archs(net, table, args.archs)
    subnets = [net.extract(a).eval() for a in archs]
    start = time.perf_counter()
    if args.reference == "standalone":  # two passes: mean the reference, gap the noise
        first, second = (time_standalone(subnets, archs, args) for _ in (1, 2))
        drift = None
    else:
        first, second, drift = time_in_rounds(net, subnets, archs, table, args)
    seconds = time.perf_counter() - start
    print(f"timed {len(archs)} held-out networks twice ({args.reference}) in {seconds:.1f} s")
    print(f"after: {load_text()}")
    first, second = np.array(first), np.array(second)
    measured = (first + second) / 2
    predicted = np.array([table.predict(a) for a in archs])
    raw = np.array([table.features(a)[0] for a in archs])
    print(
        f"measured ({args.statistic} of {args.eval_repeats} runs, {args.reference}, mean of "
        f"2 passes): {measured.min():.2f} to {measured.max():.2f} ms"
    )
    report("table prediction", predicted - measured, measured)
    report("uncalibrated sum of parts", raw - measured, measured)
    if drift is not None:
        print(f"  host speed drift since the build (calibration networks, now / then): {drift:.3f}")
        report("table, re-anchored to drift", predicted - measured / drift, measured / drift)
    report("noise: pass 1 vs pass 2", first - second, measured)
    bias = np.median((predicted - measured) / measured * 100)
    print(f"  median signed error of the table: {bias:+.1f} %")
    if args.json:
        rows = zip(archs, predicted, raw, first, second)
        keys = ("arch", "predicted_ms", "raw_ms", "pass1_ms", "pass2_ms")
        records = [dict(zip(keys, (a.to_dict(), *map(float, v)))) for a, *v in rows]
        Path(args.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
