"""The accuracy dataset (real measurements on Fashion-MNIST, resumable) and the accuracy
predictor (fit quality, metrics, safe save/load, refusing another space)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from onceforall import MBConvSpace, create_supernet
from onceforall.data import open_splits
from onceforall.evaluation import SubnetEvaluator
from onceforall.predictors import (
    AccuracyPredictor,
    PredictorMismatchError,
    build_accuracy_dataset,
    dataset_archs,
    fit_accuracy_predictor,
    kendall_tau,
    label_sampling_sd,
    read_accuracy_dataset,
    rmse,
)
from onceforall.training import load_run
from tests.conftest import needs_fashion_mnist

SPACE = MBConvSpace(resolutions=(24, 28, 32))


# ------------------------------------------------------------------------ metrics


def test_kendall_tau_known_values() -> None:
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # 6 pairs: (1,2)+ (1,3)+ (1,4)+ (2,3)- (2,4)+ (3,4)+ -> (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # tau-b with a tie in one sequence: scipy.stats.kendalltau gives 0.9128709291752769
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9128709291752769)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


def test_rmse() -> None:
    assert rmse(np.array([1.0, 3.0]), np.array([1.0, 1.0])) == pytest.approx(math.sqrt(2))


def test_label_sampling_sd_is_the_binomial_one() -> None:
    assert label_sampling_sd([50.0, 50.0], 100) == pytest.approx(5.0)  # sqrt(.25 / 100)
    assert label_sampling_sd([90.0], 1500) == pytest.approx(100 * math.sqrt(0.09 / 1500))
    # averaged as variances: sqrt(mean(p (1 - p)) / n)
    assert label_sampling_sd([90.0, 50.0], 100) == pytest.approx(100 * math.sqrt(0.17 / 100))
    assert label_sampling_sd([100.0, 0.0], 10) == 0.0
    with pytest.raises(ValueError, match="images"):
        label_sampling_sd([90.0], 0)


# ---------------------------------------------------------------------- predictor


def _macs_accuracy(archs: list) -> np.ndarray:
    """A real, deterministic, non-linear function of each arch: accuracy rising with the
    log of its MACs (as accuracy roughly does), used as the target to learn."""
    net = create_supernet("ofa_mbv3_w1.0", num_classes=10, resolutions=list(SPACE.resolutions))
    macs = np.array([net.macs(a) for a in archs], dtype=float)
    return 70.0 + 4.0 * np.log(macs / macs.min())


def test_predictor_learns_a_ranking_and_reports_held_out_quality() -> None:
    archs = dataset_archs(SPACE, 300, seed=1)
    targets = _macs_accuracy(archs)
    predictor, report = fit_accuracy_predictor(SPACE, archs, targets, epochs=150, seed=0)
    assert report.n_train == 240 and report.n_val == 60
    assert report.val_kendall_tau > 0.8, report
    assert report.val_rmse < report.val_accuracy_std, report  # better than the mean
    assert targets.min() < report.base_accuracy < targets.max()
    # predict() and predict_features() agree and validate their input
    preds = predictor.predict(archs[:5])
    feats = np.stack([SPACE.encode(a) for a in archs[:5]])
    np.testing.assert_allclose(preds, predictor.predict_features(feats), rtol=1e-6)
    with pytest.raises(ValueError, match="ks"):
        predictor.predict([{"ks": [4] * 20, "e": [3] * 20, "d": [2] * 5, "r": [24]}])


def test_predictor_training_is_reproducible() -> None:
    archs = dataset_archs(SPACE, 40, seed=2)
    targets = _macs_accuracy(archs)
    a, ra = fit_accuracy_predictor(SPACE, archs, targets, epochs=20, seed=3)
    b, rb = fit_accuracy_predictor(SPACE, archs, targets, epochs=20, seed=3)
    assert ra == rb
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_predictor_save_load_round_trip_and_space_check(tmp_path: Path) -> None:
    torch.manual_seed(0)
    predictor = AccuracyPredictor(SPACE, base_accuracy=81.5)
    path = predictor.save(tmp_path / "predictor.pt")
    loaded = AccuracyPredictor.load(path, space=SPACE)
    archs = dataset_archs(SPACE, 10, seed=0)
    np.testing.assert_array_equal(predictor.predict(archs), loaded.predict(archs))
    assert float(loaded.base_accuracy) == 81.5
    other = MBConvSpace(resolutions=(128, 160, 192, 224))
    with pytest.raises(PredictorMismatchError, match="resolutions"):
        AccuracyPredictor.load(path, space=other)


def test_predictor_load_refuses_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a predictor at all")
    with pytest.raises(ValueError, match="cannot be read as a weights-only PyTorch file"):
        AccuracyPredictor.load(bad)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an onceforall accuracy predictor"):
        AccuracyPredictor.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="no accuracy predictor"):
        AccuracyPredictor.load(tmp_path / "missing.pt")


def test_pairwise_ranking_loss_counts_each_ordered_pair_once() -> None:
    from onceforall.predictors.fit import pairwise_ranking_loss

    measured = torch.tensor([1.0, 2.0, 2.0, 3.0])  # one tie: 5 ordered pairs
    right = torch.tensor([0.0, 50.0, 60.0, 100.0])  # every pair in order, wide margins
    assert float(pairwise_ranking_loss(right, measured)) < 1e-15
    predicted = torch.tensor([0.3, -0.2, 0.5, 0.1])
    pairs = [(1, 0), (2, 0), (3, 0), (3, 1), (3, 2)]  # (higher, lower) measured
    want = np.mean([math.log1p(math.exp(-(predicted[i] - predicted[j]))) for i, j in pairs])
    assert float(pairwise_ranking_loss(predicted, measured)) == pytest.approx(want, rel=1e-6)
    assert float(pairwise_ranking_loss(predicted, torch.ones(4))) == 0.0  # all tied


def test_fit_with_a_ranking_loss_learns_the_ranking() -> None:
    archs = dataset_archs(SPACE, 300, seed=1)
    targets = _macs_accuracy(archs)
    plain, _ = fit_accuracy_predictor(SPACE, archs, targets, epochs=150, seed=0)
    ranked, report = fit_accuracy_predictor(
        SPACE, archs, targets, epochs=150, seed=0, ranking_weight=1.0
    )
    assert report.val_kendall_tau > 0.8, report
    assert report.val_rmse < report.val_accuracy_std, report
    assert not np.array_equal(plain.predict(archs[:20]), ranked.predict(archs[:20]))
    for bad in (-1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="ranking_weight must be a number >= 0"):
            fit_accuracy_predictor(SPACE, archs, targets, epochs=1, ranking_weight=bad)


def test_ensemble_averages_members_each_fitted_alone(tmp_path: Path) -> None:
    archs = dataset_archs(SPACE, 60, seed=4)
    targets = _macs_accuracy(archs)
    single, _ = fit_accuracy_predictor(SPACE, archs, targets, epochs=15, seed=5)
    ensemble, report = fit_accuracy_predictor(SPACE, archs, targets, epochs=15, seed=5, members=3)
    assert ensemble.members == 3 and len(ensemble.member_mlps()) == 3
    # Member 0 is the single-MLP fit itself: the same initialisation and batch order.
    for a, b in zip(single.mlp.state_dict().values(), ensemble.mlp.state_dict().values()):
        assert torch.equal(a, b)
    features = torch.from_numpy(np.stack([SPACE.encode(a) for a in archs]))
    with torch.no_grad():
        outputs = [mlp(features).squeeze(-1) for mlp in ensemble.member_mlps()]
    assert not torch.allclose(outputs[0], outputs[1])  # members differ
    want = float(ensemble.base_accuracy) + torch.stack(outputs).mean(0)
    np.testing.assert_allclose(ensemble.predict(archs), want.numpy(), rtol=1e-5)
    assert math.isfinite(report.val_kendall_tau) and "ensemble of 3" in ensemble.describe()

    loaded = AccuracyPredictor.load(ensemble.save(tmp_path / "ensemble.pt"), space=SPACE)
    assert loaded.members == 3
    np.testing.assert_array_equal(loaded.predict(archs), ensemble.predict(archs))
    # A file written before ensembles existed has no "members": it holds one MLP.
    payload = torch.load(single.save(tmp_path / "single.pt"), weights_only=True)
    del payload["members"]
    torch.save(payload, tmp_path / "old.pt")
    old = AccuracyPredictor.load(tmp_path / "old.pt")
    assert old.members == 1
    payload["members"] = "3"
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt: 'members' must be a whole number >= 1"):
        AccuracyPredictor.load(tmp_path / "bad.pt")
    np.testing.assert_array_equal(old.predict(archs), single.predict(archs))
    for bad in (0, 1.5, "2"):
        with pytest.raises(ValueError, match="members"):
            fit_accuracy_predictor(SPACE, archs, targets, epochs=1, members=bad)
    from onceforall.training.config import SpecializeConfig

    ensemble = {"predictor": "mlp", "predictor_members": 5}
    assert SpecializeConfig.from_dict(ensemble).predictor_members == 5
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="specialize.predictor_members must be a whole"):
            SpecializeConfig.from_dict({"predictor": "mlp", "predictor_members": bad})
    assert SpecializeConfig.from_dict({}).predictor == "linear"  # the default
    with pytest.raises(ValueError, match="specialize.predictor 'gbt' is unknown; known: mlp"):
        SpecializeConfig.from_dict({"predictor": "gbt"})
    with pytest.raises(ValueError, match="predictor_members must be 1 with predictor linear"):
        SpecializeConfig.from_dict({"predictor": "linear", "predictor_members": 5})


def test_linear_predictor_is_the_leave_one_out_ridge(tmp_path: Path) -> None:
    from onceforall.predictors.fit import RIDGE_PENALTIES, _ridge

    archs = dataset_archs(SPACE, 120, seed=6)
    targets = _macs_accuracy(archs) + np.random.default_rng(0).normal(0, 0.3, len(archs))
    linear, report = fit_accuracy_predictor(SPACE, archs, targets, layers=0)
    assert linear.layers == 0 and "linear model (ridge)" in linear.describe()
    # log(MACs) is not linear in the choices: better than the mean, if not by as much.
    assert report.val_kendall_tau > 0.5 and report.val_rmse < report.val_accuracy_std
    # The penalty is the one with the least leave-one-out error, by brute force.
    x = np.stack([SPACE.encode(a) for a in archs]).astype(np.float64)
    order = np.random.default_rng(0).permutation(len(archs))
    train = order[round(len(archs) * 0.2) :]
    x, y = x[train], targets[train]

    def fit(rows: np.ndarray, penalty: float) -> tuple[np.ndarray, float]:
        xm, ym = x[rows].mean(0), y[rows].mean()
        xc = x[rows] - xm
        w = np.linalg.solve(xc.T @ xc + penalty * np.eye(x.shape[1]), xc.T @ (y[rows] - ym))
        return w, ym - xm @ w

    def loo(penalty: float) -> float:
        errors = []
        for i in range(len(y)):
            w, b = fit(np.delete(np.arange(len(y)), i), penalty)
            errors.append(y[i] - (x[i] @ w + b))
        return float(np.mean(np.square(errors)))

    best = min(RIDGE_PENALTIES, key=loo)
    want_w, want_b = fit(np.arange(len(y)), best)
    got_w, got_b = _ridge(x.astype(np.float32), y)
    np.testing.assert_allclose(got_w, want_w, rtol=1e-4, atol=1e-5)
    assert got_b == pytest.approx(want_b, rel=1e-6)
    np.testing.assert_allclose(linear.predict(archs), x_all_predict(archs, want_w, want_b),
                               rtol=1e-5)  # fmt: skip
    loaded = AccuracyPredictor.load(linear.save(tmp_path / "linear.pt"), space=SPACE)
    np.testing.assert_array_equal(loaded.predict(archs), linear.predict(archs))
    with pytest.raises(ValueError, match="linear predictor .* ensemble of 3"):
        fit_accuracy_predictor(SPACE, archs, targets, layers=0, members=3)


def x_all_predict(archs: list, weights: np.ndarray, intercept: float) -> np.ndarray:
    return np.stack([SPACE.encode(a) for a in archs]) @ weights + intercept


def test_fit_needs_enough_rows() -> None:
    archs = dataset_archs(SPACE, 3, seed=0)
    with pytest.raises(ValueError, match="too few"):
        fit_accuracy_predictor(SPACE, archs, [1.0, 2.0, 3.0])


# ------------------------------------------------------------------ the dataset


def test_dataset_archs_are_distinct_and_include_the_extremes() -> None:
    archs = dataset_archs(SPACE, 50, seed=0)
    assert len({SPACE.canonical(a) for a in archs}) == 50
    assert SPACE.smallest(24) in archs and SPACE.largest(32) in archs
    assert archs == dataset_archs(SPACE, 50, seed=0)
    assert {a.r for a in archs} == {24, 28, 32}


@needs_fashion_mnist
def test_accuracy_dataset_measures_and_resumes(trained_run: Path, tmp_path: Path) -> None:
    config, net = load_run(trained_run)
    splits = open_splits(
        "fashion-mnist",
        holdout_size=config.holdout_size,
        seed=config.seed,
        train_subset=config.train_subset,
    )
    evaluator = SubnetEvaluator(
        splits.holdout, splits.holdout, calibration_images=64, num_workers=0
    )
    archs = dataset_archs(net.space, 6, seed=0)
    out = tmp_path / "acc.jsonl"
    build_accuracy_dataset(net, evaluator, archs[:3], out, progress=False)
    first = read_accuracy_dataset(out)
    assert [r["arch"] for r in first] == [a.to_dict() for a in archs[:3]]
    # An interruption mid-write leaves a cut-off last line; resuming drops it and
    # measures only the missing archs.
    with out.open("a") as f:
        f.write('{"arch": {"ks": [3, 5')
    rows = build_accuracy_dataset(net, evaluator, archs, out, progress=False)
    assert [r["arch"] for r in rows] == [a.to_dict() for a in archs]
    assert rows[:3] == first  # finished rows were kept, not redone
    for row, arch in zip(rows, archs):
        assert 0 <= row["accuracy"] <= 100
        assert row["resolution"] == arch.r
        assert row["macs"] == net.macs(arch) and row["params"] == net.params(arch)
    # Measuring is deterministic: the same arch gives the same accuracy again.
    again = evaluator.evaluate_arch(net, archs[4])
    assert round(again, 4) == rows[4]["accuracy"]
    # Nothing left to do: the file is unchanged.
    before = out.read_text()
    build_accuracy_dataset(net, evaluator, archs, out, progress=False)
    assert out.read_text() == before


def test_read_accuracy_dataset_errors(tmp_path: Path) -> None:
    path = tmp_path / "acc.jsonl"
    with pytest.raises(FileNotFoundError, match="no accuracy dataset"):
        read_accuracy_dataset(path)
    path.write_text('not json\n{"arch": {}, "accuracy": 1}\n')
    with pytest.raises(ValueError, match="line 1"):
        read_accuracy_dataset(path)
    path.write_text(json.dumps({"arch": {}}) + "\n")
    with pytest.raises(ValueError, match="missing"):
        read_accuracy_dataset(path)


@needs_fashion_mnist
@pytest.mark.slow  # two torchrun processes, about 11 s (make test-slow)
def test_accuracy_dataset_under_torchrun_matches_one_process(
    trained_run: Path, tmp_path: Path
) -> None:
    """Two ranks share the archs out, rank 0 merges: the same rows as one process."""
    import subprocess
    import sys

    def acc_dataset(out: Path, *launcher: str) -> None:
        cmd = [sys.executable, *launcher, "-m", "onceforall.cli", "acc-dataset"]
        cmd += ["--run-dir", str(trained_run), "--num-archs", "5", "--out", str(out)]
        cmd += ["--device", "cpu"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]

    torchrun = ("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29733")
    acc_dataset(tmp_path / "two.jsonl", *torchrun)
    acc_dataset(tmp_path / "one.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "two.jsonl"]  # merged

    def by_arch(path: Path) -> dict[str, float]:
        return {json.dumps(r["arch"]): r["accuracy"] for r in read_accuracy_dataset(path)}

    assert by_arch(tmp_path / "two.jsonl") == by_arch(tmp_path / "one.jsonl")
