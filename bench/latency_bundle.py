"""Does a table timed through a latency bundle agree with one timed in-process?

On this machine, for each space: the in-process ONNX Runtime table (``LatencyTable.build``,
backend onnxruntime), the bundle's runner (``measure.py`` in ``.venv-runner``, which has
numpy and onnxruntime and no torch) and the in-process table once more, in that order.
The two in-process tables differ only by measurement noise; the bundle's table should
differ from them no more. Compared: every entry (median absolute difference, ms and %),
and the whole-network predictions of held-out random sub-networks, with each table's
error against the networks timed whole (``measure_latency``, the same backend and
threads). Also the bundle's size and the runner's time.

    make runner-venv
    OMP_NUM_THREADS=1 .venv/bin/python bench/latency_bundle.py                 # both spaces
    OMP_NUM_THREADS=1 .venv/bin/python bench/latency_bundle.py --spaces fmnist
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_table import held_out_archs  # noqa: E402

from onceforall import create_supernet  # noqa: E402
from onceforall.latency.bundle import build_bundle, register_bundle, table_from_results  # noqa: E402
from onceforall.latency.measure import device_description, measure_latency  # noqa: E402
from onceforall.latency.table import LatencyTable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPACES = {
    # the fashion-mnist and fashion-mnist-quick presets share this space
    "fmnist": ("ofa_mbv3_w1.0", 10, [24, 28, 32]),
    "mbv3": ("ofa_mbv3_w1.0", 1000, [160, 176, 192, 208, 224]),
}


def in_process(net, resolutions, args) -> tuple[LatencyTable, float]:
    start = time.perf_counter()
    table = LatencyTable.build(
        net,
        backend="onnxruntime",
        threads=args.threads,
        resolutions=resolutions,
        repeats=args.repeats,
        calibration_archs=args.calibration_archs,
        progress=False,
    )
    return table, time.perf_counter() - start


def through_bundle(net, resolutions, args, tmp: Path) -> tuple[LatencyTable, dict]:
    start = time.perf_counter()
    info = build_bundle(
        net,
        tmp / "bundle.zip",
        resolutions=resolutions,
        repeats=args.repeats,
        calibration_archs=args.calibration_archs,
        progress=False,
    )
    built = time.perf_counter() - start
    register_bundle(tmp / "bundles", info)
    with zipfile.ZipFile(info.path) as zf:
        unpacked = sum(i.file_size for i in zf.infolist())
        zf.extractall(tmp / "unpacked")
    python = ROOT / ".venv-runner" / "bin" / "python"
    command = [str(python), str(tmp / "unpacked" / "measure.py"), "--out", str(tmp / "r.json")]
    start = time.perf_counter()
    subprocess.run([*command, "--threads", str(args.threads)], check=True)
    ran = time.perf_counter() - start
    table = table_from_results(net, tmp / "r.json", tmp / "bundles")
    facts = {
        "models": info.models,
        "zip_mb": info.size_bytes / 1e6,
        "unpacked_mb": unpacked / 1e6,
        "build_s": built,
        "runner_s": ran,
    }
    return table, facts


def compare(name: str, net, resolutions, args) -> None:
    print(f"\n== {name}: {net.name}, {net.config.num_classes} classes, r {resolutions}")
    with tempfile.TemporaryDirectory(prefix="ofa-bench-bundle-") as tmp:
        a1, a1_s = in_process(net, resolutions, args)
        bundle, facts = through_bundle(net, resolutions, args, Path(tmp))
        a2, a2_s = in_process(net, resolutions, args)
    print(
        f"bundle: {facts['models']} models, {facts['zip_mb']:.1f} MB zipped "
        f"({facts['unpacked_mb']:.0f} MB unpacked), built in {facts['build_s']:.0f} s; "
        f"runner {facts['runner_s']:.0f} s; in-process tables {a1_s:.0f} s and {a2_s:.0f} s"
    )
    tables = {"in-process 1": a1, "in-process 2": a2, "bundle": bundle}
    pairs = [
        ("in-process 1", "in-process 2"),
        ("bundle", "in-process 1"),
        ("bundle", "in-process 2"),
    ]
    keys = sorted(a1.entries)
    ms = {t: np.array([table.entries[k][0] for k in keys]) for t, table in tables.items()}
    for x, y in pairs:
        diff = np.abs(ms[x] - ms[y])
        rel = diff / ms[y] * 100
        bias = np.median((ms[x] - ms[y]) / ms[y] * 100)
        print(
            f"entries, {x} vs {y}: median |diff| {np.median(diff) * 1000:.1f} us, "
            f"{np.median(rel):.1f} % (p90 {np.percentile(rel, 90):.1f} %), median signed "
            f"{bias:+.1f} %"
        )
    archs = held_out_archs(net, a1, args.archs)
    measured = np.array([timed_whole(net, a, args) for a in archs])
    alone = timed_whole_alone(net, archs, args)
    pred = {t: np.array([table.predict(a) for a in archs]) for t, table in tables.items()}
    for where, truth in [("here", measured), ("in the runner's environment", alone)]:
        for t, table in tables.items():
            err = np.abs(pred[t] - truth) / truth * 100
            print(
                f"{args.archs} held-out networks timed whole {where}, table {t}: abs % error "
                f"median {np.median(err):.1f}, p90 {np.percentile(err, 90):.1f}, median "
                f"signed {np.median((pred[t] - truth) / truth * 100):+.1f} % (calibration "
                f"error {table.calibration_error:.1%})"
            )
    signed = (alone - measured) / measured * 100
    print(f"timed whole, runner's environment vs here: median signed {np.median(signed):+.1f} %")
    for x, y in pairs:
        signed = (pred[x] - pred[y]) / pred[y] * 100
        print(
            f"predictions, {x} vs {y}: median |diff| {np.median(np.abs(signed)):.1f} %, "
            f"p90 {np.percentile(np.abs(signed), 90):.1f} %, median signed "
            f"{np.median(signed):+.1f} %"
        )
    print(f"timed whole {measured.min():.2f}..{measured.max():.2f} ms; load {load()}")


def timed_whole(net, arch, args) -> float:
    model = net.extract(arch)
    return measure_latency(
        model, arch.r, backend="onnxruntime", threads=args.threads, repeats=args.repeats
    ).median_ms


ALONE = """
import json, statistics, sys
sys.path.insert(0, sys.argv[1])
import bundle_runner
threads, repeats = int(sys.argv[2]), int(sys.argv[3])
out = []
for path, shape in json.load(sys.stdin):
    model = bundle_runner.Model(open(path, "rb").read(), {"input_shape": shape}, threads)
    for _ in range(5):
        model()
    out.append(statistics.median(model.time_ms() for _ in range(repeats)))
print(json.dumps(out))
"""


def timed_whole_alone(net, archs, args) -> np.ndarray:
    """The same networks timed whole as ``measure_latency`` times them (5 warm-up runs,
    median of ``repeats``), by the runner's own code in ``.venv-runner`` (no torch in
    that process): the truth for a table timed there."""
    import json

    from onceforall.latency import bundle_runner
    from onceforall.storage.onnx_export import export_onnx

    with tempfile.TemporaryDirectory(prefix="ofa-bench-alone-") as tmp:
        items = []
        for i, arch in enumerate(archs):
            path = Path(tmp) / f"n{i}.onnx"
            export_onnx(net.extract(arch), (1, 3, arch.r, arch.r), path)
            items.append([str(path), [1, 3, arch.r, arch.r]])
        python = ROOT / ".venv-runner" / "bin" / "python"
        runner_dir = str(Path(bundle_runner.__file__).parent)
        command = [str(python), "-c", ALONE, runner_dir, str(args.threads), str(args.repeats)]
        done = subprocess.run(
            command, input=json.dumps(items), capture_output=True, text=True, check=True
        )
    return np.array(json.loads(done.stdout))


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spaces", nargs="+", choices=tuple(SPACES), default=list(SPACES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--calibration-archs", type=int, default=12)
    parser.add_argument("--archs", type=int, default=50, help="held-out networks")
    args = parser.parse_args()
    print(f"{device_description()}; {args.threads} thread(s); load {load()}")
    for name in args.spaces:
        supernet, classes, resolutions = SPACES[name]
        net = create_supernet(supernet, num_classes=classes, resolutions=resolutions)
        compare(name, net, resolutions, args)


if __name__ == "__main__":
    main()
