"""How precise are accuracy labels? The same sub-networks measured twice (issue 18).

An accuracy-dataset label is one sub-network's top-1 after BN recalibration on a sample
of held-out images, evaluated on another sample. Each sample adds noise; a predictor
fitted on the labels cannot rank sub-networks better than the labels rank themselves.
This measures that ceiling on a trained run: every arch is BN-recalibrated twice, on two
disjoint samples of held-out training images (A and B), and each calibrated network's
prediction on every image of an evaluation pool is kept (the run's held-out images
outside both samples, then the whole test split: never trained on). Measurement 1 is
calibration A on pool subset S1, measurement 2 calibration B on a disjoint subset S2,
the same subsets for every arch (as an accuracy dataset uses one fixed subset), for each
``--sizes``. It prints, per size, the test-retest standard deviation of one label
(sd of the differences / sqrt 2), the Kendall tau and Pearson r between the two
measurements, and the archs' own spread; then the same at the calibration alone (A
against B on the whole pool) and, from a fit of var = cal + img / n, the sizes the pool
is too small to hold twice.

    OMP_NUM_THREADS=1 .venv/bin/python bench/label_noise.py --run runs/fm-long \\
        --archs 100 --sizes 1500 5000 6500 10000

Each arch is measured in ONNX Runtime by default (``--runtime torch``: eager PyTorch;
the two agree to float rounding, ``tests/test_evaluation_ort.py``).

Per-image results go to ``RUN/label_noise.jsonl`` (one line per arch and calibration,
appended as measured), so a killed run resumes where it stopped. Averaged over both
calibrations and the pool's held-out images, they are the low-noise truth
``bench/predictor_compare.py`` scores predictors against.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from onceforall.data import make_loader, split_holdout
from onceforall.deploy.run_inputs import memory_format
from onceforall.evaluation import RUNTIMES, ort, recalibrate_bn
from onceforall.predictors.dataset import dataset_archs
from onceforall.predictors.fit import kendall_tau
from onceforall.training import load_run


class Pool:
    """The calibration samples and the evaluation pool, decoded once per resolution."""

    def __init__(self, config, data: str, calibration_images: int, workers: int) -> None:
        splits = replace(config, test_subset=None).open_splits(data)
        rest, both = split_holdout(splits.holdout, 2 * calibration_images, config.seed + 1)
        a, b = split_holdout(both, calibration_images, config.seed + 2)
        self.parts = {"A": a, "B": b, "rest": rest, "test": splits.test}
        self.size = len(rest) + len(splits.test)
        self.calibration_images = calibration_images
        self.seed, self.workers = config.seed, workers
        self._cache: dict[tuple[str, int], list] = {}

    def batches(self, part: str, resolution: int) -> list:
        key = (part, resolution)
        if key not in self._cache:
            loader = make_loader(
                self.parts[part],
                batch_size=500,
                resolutions=resolution,
                train=False,
                seed=self.seed,
                num_workers=self.workers,
            )
            self._cache[key] = list(loader)
        return self._cache[key]


@torch.no_grad()
def correct_on_pool(
    supernet, arch, pool: Pool, calibration: str, fmt, runtime: str = "torch"
) -> np.ndarray:
    """Whether ``arch``, BN-recalibrated on sample ``calibration``, classifies each pool
    image right (held-out rest, then test split), measured by ``runtime``."""
    parts = [batch for part in ("rest", "test") for batch in pool.batches(part, arch.r)]
    if runtime == "onnxruntime":  # the same measurement, 2.4-3.4x faster (evaluation/ort.py)
        net = ort.OrtNetwork(supernet.extract(arch), parts[0][0].shape[1:])
        net.recalibrate(pool.batches(calibration, arch.r), pool.calibration_images)
        return np.concatenate(
            [(logits.argmax(1) == labels).numpy() for logits, labels in net.predict(parts)]
        )
    net = recalibrate_bn(
        supernet,
        arch,
        pool.batches(calibration, arch.r),
        pool.calibration_images,
        memory_format=fmt,
    ).eval()
    hits = []
    for images, labels in parts:
        logits = net(images.to(memory_format=fmt))
        hits.append((logits.argmax(1) == labels).numpy())
    return np.concatenate(hits)


def measure(args, rows_path: Path) -> list[dict]:
    """Measure (or resume) every arch under both calibrations; return the rows."""
    config, supernet = load_run(args.run)
    fmt = memory_format(config)
    supernet = supernet.to(memory_format=fmt).eval()
    pool = Pool(config, args.data, args.calibration_images or config.bn_recal_images, 2)
    rows = []
    if rows_path.is_file():
        rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    done = {(json.dumps(r["arch"], sort_keys=True), r["calibration"]) for r in rows}
    archs = dataset_archs(supernet.space, args.archs, seed=args.seed)
    todo = [
        (arch, c)
        for arch in archs
        for c in ("A", "B")
        if (json.dumps(arch.to_dict(), sort_keys=True), c) not in done
    ]
    with rows_path.open("a") as f:
        for arch, c in tqdm(todo, desc="archs x calibrations", dynamic_ncols=True):
            hits = correct_on_pool(supernet, arch, pool, c, fmt, args.runtime)
            row = {
                "arch": arch.to_dict(),
                "calibration": c,
                "runtime": args.runtime,
                "pool": int(pool.size),
                "held_out": len(pool.parts["rest"]),  # the pool's first images
                "hits": base64.b64encode(np.packbits(hits).tobytes()).decode(),
            }
            f.write(json.dumps(row) + "\n")
            f.flush()
            rows.append(row)
    return rows


def hits_matrices(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(archs, pool images) booleans of calibrations A and B, for the archs measured
    under both, in the same order."""
    hits: dict[str, dict[str, np.ndarray]] = {"A": {}, "B": {}}
    for row in rows:
        bits = np.frombuffer(base64.b64decode(row["hits"]), np.uint8)
        key = json.dumps(row["arch"], sort_keys=True)
        hits[row["calibration"]][key] = np.unpackbits(bits)[: row["pool"]].astype(bool)
    keys = [k for k in hits["A"] if k in hits["B"]]
    return np.stack([hits["A"][k] for k in keys]), np.stack([hits["B"][k] for k in keys])


def compare(m1: np.ndarray, m2: np.ndarray) -> tuple[float, float, float]:
    """Test-retest sd of one label, Kendall tau, Pearson r (percent points)."""
    sd = float(np.std(m1 - m2, ddof=1) / math.sqrt(2))
    return sd, kendall_tau(m1, m2), float(np.corrcoef(m1, m2)[0, 1])


def report(rows: list[dict], sizes: list[int], seed: int) -> None:
    a, b = hits_matrices(rows)
    n_archs, pool = a.shape
    truth = 50.0 * (a.mean(1) + b.mean(1))
    print(
        f"{n_archs} archs, BN recalibrated on two disjoint samples A and B; evaluation "
        f"pool {pool} images; the archs' own spread (sd of their mean top-1 over both "
        f"calibrations and the whole pool): {np.std(truth, ddof=1):.3f} points, range "
        f"{truth.min():.2f}-{truth.max():.2f} %\n"
    )
    print("images per label   sd of one label   Kendall tau   Pearson r   (measured)")
    order = np.random.default_rng(seed).permutation(pool)
    fitted = []
    for n in sizes:
        if 2 * n > pool:
            continue
        s1, s2 = order[:n], order[n : 2 * n]
        sd, tau, r = compare(100 * a[:, s1].mean(1), 100 * b[:, s2].mean(1))
        fitted.append((n, sd))
        print(f"{n:16d}   {sd:15.3f}   {tau:11.3f}   {r:9.3f}")
    sd_cal, tau_cal, r_cal = compare(100 * a.mean(1), 100 * b.mean(1))
    print(
        f"{'calibration only':>16s}   {sd_cal:15.3f}   {tau_cal:11.3f}   {r_cal:9.3f}"
        f"   (A and B on the same {pool} images)"
    )
    if len(fitted) < 2:
        return
    ns, sds = np.array([n for n, _ in fitted], float), np.array([s for _, s in fitted])
    design = np.stack([np.ones_like(ns), 1.0 / ns], 1)
    (cal_var, img_var), *_ = np.linalg.lstsq(design, sds**2, rcond=None)
    cal_var = max(cal_var, 0.0)
    print(
        f"\nfit var(label) = {cal_var:.4f} + {img_var:.1f} / n  (calibration sd "
        f"{math.sqrt(cal_var):.3f} points); expected for labels of n images, tau from "
        "200 simulated pairs of labels around the archs' pooled top-1 (itself measured, so\n"
        "the spread is slightly overstated):"
    )
    rng = np.random.default_rng(seed)
    for n in sorted(set(sizes) | {10000, 20000}):
        sd = math.sqrt(cal_var + img_var / n)
        taus = [
            kendall_tau(truth + rng.normal(0, sd, n_archs), truth + rng.normal(0, sd, n_archs))
            for _ in range(200)
        ]
        print(f"{n:16d}   {sd:15.3f}   {np.mean(taus):11.3f}   (model)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--archs", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1500, 5000, 10000])
    parser.add_argument("--calibration-images", type=int, help="default: the run's")
    parser.add_argument("--seed", type=int, default=1, help="archs (the dataset's are 0)")
    parser.add_argument(
        "--runtime", choices=RUNTIMES, default="onnxruntime", help="what measures each arch"
    )
    args = parser.parse_args()
    rows = measure(args, Path(args.run) / "label_noise.jsonl")
    report(rows, args.sizes, args.seed)


if __name__ == "__main__":
    main()
