"""Which accuracy predictor ranks sub-networks best? Learning curves (issue 18, part 1).

Each predictor is fitted on the first n rows of an accuracy dataset (``ofa acc-dataset``
labels: one BN calibration, a fixed subset of held-out images) for several n, and scored
against a truth set of other archs: Kendall tau and RMSE (points). The truth is
``bench/label_noise.py``'s measurement, each arch's top-1 on its evaluation pool
(``--truth-images pool``: the run's held-out images outside both calibration samples,
then the whole test split; ``held-out``: the held-out images only) averaged over its two
independent BN calibrations (its own noise, and the Kendall tau a perfect predictor
would reach against it, are printed beside the
scores); without one, ``--holdout N`` scores against the dataset's last N rows, labels
exactly as noisy as the training ones. Predictors, all on the space's one-hot encoding:

- ``mlp``: the paper's and our default (3 x 400 ReLU, squared error, 300 epochs);
- ``mlp-ensemble``: five of them, each from its own seed, averaged
  (``specialize.predictor_members: 5``);
- ``mlp-pairwise``: the same MLP trained on squared error plus a pairwise logistic
  ranking loss over every pair of a batch (``fit_accuracy_predictor(ranking_weight=1)``;
  the ranking is what the search uses);
- ``gbt``: scikit-learn's histogram gradient-boosted trees;
- ``linear``: the library's linear predictor (``layers=0``: ridge regression in closed
  form, its penalty chosen by leave-one-out error);
- ``ridge``: scikit-learn's ``RidgeCV``, the same model (a check on ours).

    OMP_NUM_THREADS=1 .venv/bin/python bench/predictor_compare.py --run runs/fm-long \\
        --sizes 100 250 500 1000 --plot docs/predictor_curves.png

scikit-learn is in the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from onceforall.predictors.dataset import read_accuracy_dataset
from onceforall.predictors.fit import (
    RIDGE_PENALTIES,
    fit_accuracy_predictor,
    kendall_tau,
    rmse,
)
from onceforall.training import load_run

Predict = Callable[[np.ndarray], np.ndarray]  # encodings -> predicted top-1
Fit = Callable[[list, np.ndarray, np.ndarray, int], Predict]  # (archs, encodings, top-1, seed)


def _key(arch: dict) -> str:
    return json.dumps(arch, sort_keys=True)


def read_truth(path: Path, images: str = "pool") -> tuple[list[dict], np.ndarray, float]:
    """Archs, their low-noise top-1 and that truth's standard error (points), from
    ``label_noise.jsonl`` rows: hits on the pool (or its held-out images only) averaged
    over calibrations A and B.

    The error has two parts: the calibration's, sd(A - B) / 2 on the same images, and
    the images', from two halves of them (their difference has four times the variance
    of the whole set's image noise). Both are what differs from arch to arch; a shift
    common to every arch (an easier set of images) changes no ranking and is left out."""
    hits: dict[str, dict[str, np.ndarray]] = {}
    archs: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        bits = np.unpackbits(np.frombuffer(base64.b64decode(row["hits"]), np.uint8))
        held_out = row.get("held_out", row["pool"])  # older rows: the whole pool
        used = held_out if images == "held-out" else row["pool"]
        key = _key(row["arch"])
        hits.setdefault(key, {})[row["calibration"]] = bits[:used].astype(float)
        archs[key] = row["arch"]
    keys = [k for k, by_cal in hits.items() if {"A", "B"} <= set(by_cal)]
    a = np.stack([hits[k]["A"] for k in keys]) * 100
    b = np.stack([hits[k]["B"] for k in keys]) * 100
    truth = (a.mean(1) + b.mean(1)) / 2
    # The mean of two labels has half the variance of one: sd(A - B) / 2.
    calibration = float(np.std(a.mean(1) - b.mean(1), ddof=1) / 2)
    both = (a + b) / 2
    order = np.random.default_rng(0).permutation(both.shape[1])
    halves = both[:, order[: len(order) // 2]].mean(1) - both[:, order[len(order) // 2 :]].mean(1)
    image = float(np.std(halves, ddof=1) / 2)
    return [archs[k] for k in keys], truth, math.hypot(calibration, image)


def ceiling_tau(truth: np.ndarray, noise: float, seed: int = 0) -> float:
    """The Kendall tau a perfect predictor would reach against ``truth`` measured with
    ``noise``: the truth against itself plus that noise again (200 draws)."""
    rng = np.random.default_rng(seed)
    return float(np.mean([kendall_tau(truth, truth + rng.normal(0, noise, len(truth)))
                          for _ in range(200)]))  # fmt: skip


# ------------------------------------------------------------------ the predictors
def fit_gbt(x: np.ndarray, y: np.ndarray, seed: int) -> Predict:
    from sklearn.ensemble import HistGradientBoostingRegressor

    model = HistGradientBoostingRegressor(
        max_iter=400, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=5,
        l2_regularization=1.0, random_state=seed,
    ).fit(x, y)  # fmt: skip
    return model.predict


def fit_ridge(x: np.ndarray, y: np.ndarray, seed: int) -> Predict:
    from sklearn.linear_model import RidgeCV

    return RidgeCV(alphas=RIDGE_PENALTIES).fit(x, y).predict  # the library's penalties


def predictors(space) -> dict[str, Fit]:
    def library(**options) -> Fit:  # fit_accuracy_predictor with these options
        def fit(archs, x, y, seed) -> Predict:
            predictor, _ = fit_accuracy_predictor(
                space, archs, y, val_fraction=0.0, seed=seed, **options
            )
            return predictor.predict_features

        return fit

    mlp = library()  # the paper's
    linear = library(layers=0)  # specialize.predictor: linear
    ensemble = library(members=5)  # specialize.predictor_members: 5
    pairwise = library(ranking_weight=1.0)

    return {
        "mlp": mlp,
        "linear": linear,
        "mlp-ensemble": ensemble,
        "mlp-pairwise": pairwise,
        "gbt": lambda archs, x, y, seed: fit_gbt(x, y, seed),
        "ridge": lambda archs, x, y, seed: fit_ridge(x, y, seed),
    }


# ------------------------------------------------------------------------ the run
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="its supernet's space; its dataset")
    parser.add_argument("--train", help="accuracy dataset (default: RUN/accuracy_dataset.jsonl)")
    parser.add_argument("--truth", help="label_noise.jsonl (default: RUN/label_noise.jsonl)")
    parser.add_argument(
        "--truth-images", choices=("pool", "held-out"), default="pool",
        help="the truth's images: held-out and test (pool) or held-out only",
    )  # fmt: skip
    parser.add_argument("--holdout", type=int, help="no truth file: score on the last N rows")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500, 1000])
    parser.add_argument("--repeats", type=int, default=3, help="training subsets per size")
    parser.add_argument("--only", nargs="+", help="these predictors only")
    parser.add_argument("--plot", help="PNG of the learning curves")
    args = parser.parse_args()

    _, supernet = load_run(args.run)
    space = supernet.space
    train_path = Path(args.train or Path(args.run) / "accuracy_dataset.jsonl")
    rows = read_accuracy_dataset(train_path)
    truth_path = Path(args.truth or Path(args.run) / "label_noise.jsonl")
    if args.holdout:
        truth_rows, rows = rows[-args.holdout :], rows[: -args.holdout]
        truth_archs = [r["arch"] for r in truth_rows]
        truth = np.array([r["accuracy"] for r in truth_rows], float)
        noise, what = float("nan"), f"the dataset's last {args.holdout} rows (noisy labels)"
    elif truth_path.is_file():
        truth_archs, truth, noise = read_truth(truth_path, args.truth_images)
        what = (
            f"{truth_path}, {args.truth_images} images ({len(truth)} archs, standard error "
            f"{noise:.3f} points; a perfect predictor's tau {ceiling_tau(truth, noise):.3f})"
        )
    else:
        parser.error(f"no truth: {truth_path} is missing (bench/label_noise.py) and no --holdout")
    seen = {_key(a) for a in truth_archs}
    rows = [r for r in rows if _key(r["arch"]) not in seen]  # truth archs never train
    x_all = np.stack([space.encode(r["arch"]) for r in rows]).astype(np.float32)
    y_all = np.array([r["accuracy"] for r in rows], float)
    x_truth = np.stack([space.encode(a) for a in truth_archs]).astype(np.float32)
    archs = [r["arch"] for r in rows]
    fits = predictors(space)
    fits = {name: fit for name, fit in fits.items() if not args.only or name in args.only}
    sizes = sorted({min(n, len(rows)) for n in args.sizes})  # all rows for too large a size
    print(
        f"{len(rows)} training rows ({train_path}); truth: "
        f"{what}; its archs' spread {np.std(truth, ddof=1):.3f} points\n"
    )
    print(f"{'predictor':>14s} {'archs':>6s}   Kendall tau (sd)   RMSE, points (sd)")
    curves: dict[str, list[tuple[int, float, float, float, float]]] = {}
    for name, fit in fits.items():
        for n in sizes:
            taus, errors = [], []
            for repeat in range(args.repeats if n < len(rows) else 1):
                pick = np.random.default_rng(repeat).permutation(len(rows))[:n]
                predict = fit([archs[i] for i in pick], x_all[pick], y_all[pick], repeat)
                got = np.asarray(predict(x_truth), float)
                taus.append(kendall_tau(got, truth))
                errors.append(rmse(got, truth))
            row = (n, np.mean(taus), np.std(taus), np.mean(errors), np.std(errors))
            curves.setdefault(name, []).append(row)
            _, tau, tau_sd, error, error_sd = row
            print(
                f"{name:>14s} {n:6d}   {tau:6.3f} ({tau_sd:.3f})     {error:6.3f} ({error_sd:.3f})"
            )
    if args.plot:
        plot(curves, args.plot, what, noise)


def plot(curves: dict, path: str, what: str, noise: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, points in curves.items():
        ns = [p[0] for p in points]
        left.errorbar(ns, [p[1] for p in points], [p[2] for p in points], label=name, capsize=3)
        right.errorbar(ns, [p[3] for p in points], [p[4] for p in points], label=name, capsize=3)
    left.axhline(0.8, color="grey", ls=":", lw=1)
    right.axhline(0.5, color="grey", ls=":", lw=1)
    if not math.isnan(noise):
        right.axhline(noise, color="black", ls="--", lw=1, label="truth's own error")
    for ax, label in ((left, "Kendall tau against the truth"), (right, "RMSE (points)")):
        ax.set_xscale("log")
        ax.set_xlabel("training archs")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(f"accuracy predictors, scored on {what}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
