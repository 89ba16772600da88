"""The same sub-networks on every runtime this CPU has, FP32 and INT8, side by side.

Speed: OFA-MobileNetV3 w1.0 sub-networks at ImageNet size (224 px, 1,000 classes; the
smallest and the largest) and, with ``--run``, the sub-networks the run chose
(``RUN/specialized.json``) at their own resolution, each prepared for every installed
backend (PyTorch eager, ONNX Runtime, OpenVINO and LiteRT, FP32 and INT8) and timed in interleaved
rounds (every runner once per round, in a seeded random order), at batch 1 and batch 32.
Ratios are against ONNX Runtime FP32 of the same network and batch.

Accuracy (with ``--run``): test top-1 of the run's chosen sub-networks and of its
smallest and largest (at its largest resolution), FP32 PyTorch against the INT8 model
an export would write (calibrated on held-out images), for each installed INT8 backend
(ONNX Runtime's with ``--int8-ops``, OpenVINO's NNCF, LiteRT's PT2E).

    OMP_NUM_THREADS=1 .venv/bin/python bench/runtimes.py [--run runs/demo] [--threads 1]
        [--no-speed | --no-accuracy]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

from onceforall import create_supernet
from onceforall.deploy.quantized import int8_top1
from onceforall.deploy.run_inputs import evaluator_for_run
from onceforall.latency.backends import BACKENDS, QuantizedBackend, get_backend
from onceforall.latency.backends.onnxruntime import QUANTIZED_OPS, OnnxRuntimeInt8
from onceforall.latency.measure import (
    backend_versions,
    device_description,
    make_runner,
    time_interleaved,
    timing_scope,
)
from onceforall.storage.run_layout import RunLayout
from onceforall.training import load_run


def installed() -> list[str]:
    found = []
    for backend in BACKENDS:
        try:
            backend_versions(backend)
        except ImportError:
            continue
        found.append(backend)
    return found


def time_networks(nets: dict, backends: list[str], batch: int, threads: int, rounds: int):
    """{(network, backend): median ms} of every network on every backend, interleaved."""
    keys, runners = [], []
    for name, (module, r) in nets.items():
        for backend in backends:
            keys.append((name, backend))
            runners.append(make_runner(module, (batch, 3, r, r), backend=backend, threads=threads))
    # Every backend's scope at once: torch's sets its threads, the others hold their own.
    samples = []
    with timing_scope("torch", threads):
        samples = time_interleaved(runners, rounds, warmup=3, settle=2)
    return {key: statistics.median(s) for key, s in zip(keys, samples)}


def print_speed(nets: dict, backends: list[str], times: dict, batch: int) -> None:
    print(f"\nbatch {batch}: median ms (x speed-up against onnxruntime FP32)")
    print("| network | " + " | ".join(backends) + " |")
    print("| --- |" + " ---: |" * len(backends))
    for name in nets:
        base = times.get((name, "onnxruntime"))
        cells = []
        for backend in backends:
            ms = times[(name, backend)]
            ratio = f" ({base / ms:.2f}x)" if base else ""
            cells.append(f"{ms:.2f}{ratio}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def int8_backends(backends: list[str], operators: list[str]) -> list[QuantizedBackend]:
    """The INT8 backends among ``backends``; ONNX Runtime's quantizing ``operators``."""
    found = []
    for name in backends:
        runtime = get_backend(name)
        if isinstance(runtime, OnnxRuntimeInt8):
            runtime = OnnxRuntimeInt8(operators)
        if isinstance(runtime, QuantizedBackend):
            found.append(runtime)
    return found


def accuracy(run: str, data: str, int8: list[QuantizedBackend], operators: list[str]) -> None:
    config, supernet = load_run(run)
    evaluator = evaluator_for_run(config, data)
    r = max(supernet.space.resolutions)
    nets = {"smallest": supernet.space.smallest(r), "largest": supernet.space.largest(r)}
    chosen = RunLayout(run).specialized
    if chosen.is_file():
        for row in json.loads(chosen.read_text()):
            nets[row["target"]] = supernet.parse_arch(row["arch"])
    print(f"\naccuracy on {run}'s test split ({len(evaluator.test_set)} images); ONNX Runtime's")
    print(f"INT8 quantizes {', '.join(operators)}; top-1 (change against FP32):")
    print("| network | FP32 | " + " | ".join(b.name for b in int8) + " |")
    print("| --- | ---: |" + " ---: |" * len(int8))
    for name, arch in nets.items():
        start = time.perf_counter()
        fp32 = evaluator.evaluate_arch(supernet, arch)
        cells = []
        for backend in int8:
            top1 = int8_top1(supernet, arch, evaluator, backend)
            cells.append(f"{top1:.2f} ({top1 - fp32:+.2f})")
        took = time.perf_counter() - start
        print(f"| {name} (r{arch.r}) | {fp32:.2f} | " + " | ".join(cells) + f" | ({took:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="also the run's chosen sub-networks, and accuracy")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--no-imagenet", action="store_true")
    parser.add_argument("--backends", nargs="+", help="default: every installed one")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--no-speed", action="store_true", help="accuracy only (needs --run)")
    parser.add_argument(
        "--int8-ops", nargs="+", default=list(QUANTIZED_OPS), help="ONNX operators INT8 quantizes"
    )
    args = parser.parse_args()

    backends = [b for b in installed() if not args.backends or b in args.backends]
    print(device_description())
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    flags = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16") if f in lscpu]
    load = os.getloadavg()[0]
    print(f"backends: {', '.join(backends)}; int8-relevant CPU flags: {', '.join(flags) or 'none'}")
    versions = {}
    for backend in backends:
        versions.update(backend_versions(backend))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    print(f"threads {args.threads}, {args.rounds} interleaved rounds; load {load:.2f}")

    nets: dict = {}
    if not args.no_imagenet:
        big = create_supernet("ofa_mbv3_w1.0", num_classes=1000, resolutions=[224])
        nets["imagenet smallest r224"] = (big.extract(big.space.smallest(224)).eval(), 224)
        nets["imagenet largest r224"] = (big.extract(big.space.largest(224)).eval(), 224)
    if args.run:
        _, supernet = load_run(args.run)
        chosen = RunLayout(args.run).specialized
        for row in json.loads(chosen.read_text()) if chosen.is_file() else []:
            arch = supernet.parse_arch(row["arch"])
            nets[f"{row['target']} r{arch.r}"] = (supernet.extract(arch).eval(), arch.r)
    for batch in [] if args.no_speed else args.batches:
        start = time.perf_counter()
        times = time_networks(nets, backends, batch, args.threads, args.rounds)
        print_speed(nets, backends, times, batch)
        print(f"({time.perf_counter() - start:.0f} s; load now {os.getloadavg()[0]:.2f})")
    if args.run and not args.no_accuracy:
        accuracy(args.run, args.data, int8_backends(backends, args.int8_ops), args.int8_ops)


if __name__ == "__main__":
    main()
