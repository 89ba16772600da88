"""The whole job end to end (``ofa run``) on a tiny budget of real Fashion-MNIST: every
artefact is checked, and running again reuses them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from onceforall.cli import main
from onceforall.deploy.export import load_exported
from onceforall.latency.table import LatencyTable
from onceforall.predictors import AccuracyPredictor, label_sampling_sd, read_accuracy_dataset
from onceforall.search import latency_cost, parse_constraints
from onceforall.training import load_run
from tests.conftest import RESNET_TINY_STAGES, needs_fashion_mnist

pytestmark = needs_fashion_mnist

TINY_RUN = {
    "supernet": "ofa_mbv3_w1.0",
    "resolutions": [24, 32],
    "eval_resolutions": [32],
    "batch_size": 16,
    "holdout_size": 96,
    "train_subset": 64,
    "test_subset": 64,
    "num_workers": 0,
    "num_random_val_archs": 0,
    "bn_recal_images": 32,
    "stages": [
        {"name": "full", "epochs": 1, "lr": 0.05, "distill": False},
        {
            "name": "elastic",
            "epochs": 1,
            "lr": 0.01,
            "subnets_per_step": 2,
            "kernel_sizes": [3, 5, 7],
            "depths": [2, 3, 4],
            "expand_ratios": [3, 4, 6],
            "sort_channels": True,
        },
    ],
    "specialize": {
        "acc_dataset_archs": 12,
        "predictor_epochs": 20,
        "latency_repeats": 2,
        "num_targets": 2,
        "random_baseline": 1,
        "generations": 10,
        "export_int8": True,
    },
}


def test_ofa_run_end_to_end_then_reuse(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(TINY_RUN))  # JSON is YAML
    run = tmp_path / "run"
    assert main(["run", "--config", str(config), "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "Pareto plot:" in printed and "exported:" in printed
    # The forecast after training names the steps still to come; the end says what each
    # step took (tests/test_forecast.py checks the arithmetic).
    forecast = next(line for line in printed.splitlines() if line.startswith("forecast:"))
    for step in ("accuracy dataset", "latency table", "specialise", "export"):
        assert step in forecast
    took = next(line for line in printed.splitlines() if line.startswith("took on this"))
    for step in ("full", "elastic", "accuracy dataset", "predictor", "latency table"):
        assert f"{step} " in took

    # The supernet checkpoint loads.
    _, supernet = load_run(run)
    # The accuracy dataset and the predictor.
    rows = read_accuracy_dataset(run / "accuracy_dataset.jsonl")
    assert len(rows) == 12
    predictor = AccuracyPredictor.load(run / "accuracy_predictor.pt", space=supernet.space)
    # The latency table covers the space.
    table = LatencyTable.load(run / "latency_table.json", supernet)
    assert set(table.resolutions) == {24, 32}
    # Every chosen arch meets its target by the table it was searched with.
    chosen = json.loads((run / "specialized.json").read_text())
    assert len(chosen) == 2
    costs = {"latency_ms": latency_cost(table, supernet.space)}
    for row in chosen:
        for constraint in parse_constraints(row["target"].split(","), costs):
            assert constraint.cost.of(row["arch"]) <= constraint.limit
        assert row["predicted_accuracy"] == pytest.approx(
            float(predictor.predict([row["arch"]])[0]), abs=1e-4
        )
        assert 0 <= row["measured_accuracy"] <= 100
    assert (run / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The predictor's report says how noisy its labels are; the table of winners says
    # that the predicted top-1 (held-out training images) is not test top-1, and by how much.
    images = rows[0]["images"]
    assert {r["images"] for r in rows} == {images} and images > 0
    sd = label_sampling_sd([r["accuracy"] for r in rows], images)
    assert f"each label is top-1 on {images:,} held-out images, binomial sd {sd:.2f} pp" in printed
    gap = float(np.mean([r["predicted_accuracy"] - r["measured_accuracy"] for r in chosen]))
    side = "above" if gap >= 0 else "below"
    assert f"on these 2 networks it is {abs(gap):.2f} points {side} test top-1" in printed

    # Exported models rebuild without the supernet and ONNX agrees with PyTorch.
    import onnxruntime

    exports = sorted((run / "exports").glob("[!.]*"))  # not the hidden locks
    assert len(exports) == 2
    for folder in exports:
        model = load_exported(folder).eval()
        arch = json.loads((folder / "arch.json").read_text())
        r = arch["r"][0]
        x = torch.randn(3, 3, r, r)
        with torch.no_grad():
            expected = model(x).numpy()
        session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        np.testing.assert_allclose(got, expected, atol=1e-4 * max(1, np.abs(expected).max()))
        metadata = json.loads((folder / "metadata.json").read_text())
        assert metadata["arch"] == arch and metadata["latency_ms"] > 0
        # Its INT8 model too (specialize.export_int8), or one line saying why not: a
        # failed INT8 check leaves the FP32 export standing.
        runtimes = metadata["runtimes"]
        assert runtimes["model.onnx"]["precision"] == "fp32"
        assert ("model.int8.onnx" in runtimes) != (f"{metadata['target']}: no INT8" in printed)
    table = printed[printed.index("the exports' model files on this CPU") :]
    assert "model.onnx ms" in table and all(f.name in table for f in exports)

    # `ofa export` of a chosen arch measures what the pipeline's export measured.
    folder = exports[0]
    out = tmp_path / "cli_export"
    export_args = ["--run", str(run), "--arch", str(folder / "arch.json"), "--out", str(out)]
    assert main(["export", *export_args]) == 0
    capsys.readouterr()
    pipeline_top1 = json.loads((folder / "metadata.json").read_text())["top1"]
    assert json.loads((out / "metadata.json").read_text())["top1"] == pipeline_top1

    # Running again reuses everything: nothing is retrained or re-measured.
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    kept = [
        run / "accuracy_dataset.jsonl",
        run / "accuracy_predictor.pt",
        run / "latency_table.json",
        run / "metrics.jsonl",
    ]
    assert main(["run", "--config", str(config), "--out", str(run)]) == 0
    second = capsys.readouterr().out
    assert "reusing" in second
    for path in kept:
        assert path.stat().st_mtime_ns == stamps[path], path

    # Once the supernet changed (here: a newer supernet checkpoint, as resumed training
    # writes), the accuracy dataset and predictor are measured and fitted again; the
    # latency table (block shapes, not weights) is kept; exports name the new supernet.
    from onceforall.training.run_dir import supernet_digest
    from tests.test_derived_results import _replace_supernet_weights

    _replace_supernet_weights(run)
    digest = supernet_digest(run)
    assert main(["run", "--config", str(config), "--out", str(run)]) == 0
    third = capsys.readouterr().out
    assert "was measured otherwise (supernet_sha256:" in third
    rows = read_accuracy_dataset(run / "accuracy_dataset.jsonl")
    assert len(rows) == 12
    assert {r["measured_with"]["supernet_sha256"] for r in rows} == {digest}
    assert AccuracyPredictor.load(run / "accuracy_predictor.pt").supernet_sha256 == digest
    assert (run / "latency_table.json").stat().st_mtime_ns == stamps[run / "latency_table.json"]
    for folder in (run / "exports").glob("[!.]*"):
        assert json.loads((folder / "metadata.json").read_text())["supernet_sha256"] == digest
    assert {r["supernet_sha256"] for r in json.loads((run / "specialized.json").read_text())} == {
        digest
    }


@pytest.mark.slow  # about 20 s: ofa run of a second MBConv family (make test-slow)
def test_ofa_run_trains_and_specialises_proxylessnas(tmp_path: Path, capsys) -> None:
    """The same job on the OFA-ProxylessNAS space: six stages, the last one a single
    block whose depth is fixed; training, search, export and fine-tuning all go
    through."""
    config = tmp_path / "tiny.yaml"
    settings = {**TINY_RUN, "supernet": "ofa_proxyless_w1.3"}
    settings["specialize"] = {**TINY_RUN["specialize"], "num_targets": 1, "finetune_epochs": 1}
    config.write_text(json.dumps(settings))
    run = tmp_path / "run"
    assert main(["run", "--config", str(config), "--out", str(run)]) == 0
    capsys.readouterr()
    _, supernet = load_run(run)
    assert supernet.space.num_slots == 21 and supernet.feature_mix is None
    table = LatencyTable.load(run / "latency_table.json", supernet)
    [row] = json.loads((run / "specialized.json").read_text())
    arch = supernet.space.parse(row["arch"])
    assert len(arch.d) == 6 and arch.d[5] == 1
    for constraint in parse_constraints(
        row["target"].split(","), {"latency_ms": latency_cost(table, supernet.space)}
    ):
        assert constraint.cost.of(arch) <= constraint.limit
    folder, tuned = sorted((run / "exports").glob("[!.]*"))
    model = load_exported(folder).eval()
    x = torch.randn(2, 3, arch.r, arch.r)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
    # specialize.finetune_epochs: each winner also fine-tuned, beside its export.
    assert tuned.name == folder.name + "_finetuned"
    record = json.loads((tuned / "metadata.json").read_text())["finetune"]
    assert record["epochs"] == 1 and record["steps"] == 4  # 64 images, batch 16
    assert load_exported(tuned).arch == model.arch
    # The step again with the same winner (a rerun of ofa run whose search chose the
    # same network): the finished fine-tuning is reused, not trained nor exported again.
    from onceforall.deploy.finetune_step import finetune_winners
    from onceforall.deploy.specialize import Specialized
    from onceforall.storage.run_layout import RunLayout

    stamp = (tuned / "metadata.json").stat().st_mtime_ns
    said: list[str] = []
    config_, supernet_ = load_run(run)
    winner = Specialized(row["target"], arch, row["predicted_accuracy"], 0, 0)
    args = (config_, "fashion-mnist", RunLayout(run), supernet_, [winner], said.append)
    assert finetune_winners(*args, None, False) == [tuned]
    assert said[-1] == f"  {row['target']}: reusing {tuned}"
    assert (tuned / "metadata.json").stat().st_mtime_ns == stamp
    # A rerun whose search chose another network for the target: the checkpoints of the
    # old one's fine-tuning are set aside, not resumed into the new network.
    other = supernet_.space.smallest(arch.r)
    assert other != arch
    moved = Specialized(row["target"], other, 0.0, 0, 0)
    assert finetune_winners(*args[:4], [moved], said.append, None, False) == [tuned]
    assert load_exported(tuned).arch == other


@pytest.mark.slow
def test_ofa_run_trains_and_specialises_resnet50(tmp_path: Path, capsys) -> None:
    """OFA-ResNet50 through the whole job: its own stages (depth, expand, width), the
    accuracy dataset and predictor, a MACs target (latency tables are MBConv-only), and
    an export whose ONNX agrees with PyTorch."""
    settings = {
        **TINY_RUN,
        "supernet": "ofa_resnet50",
        "train_subset": 32,
        "stages": RESNET_TINY_STAGES,
        "specialize": {**TINY_RUN["specialize"], "acc_dataset_archs": 8, "num_targets": 1},
    }
    config = tmp_path / "resnet.yaml"
    config.write_text(json.dumps(settings))
    run = tmp_path / "run"
    assert main(["run", "--config", str(config), "--out", str(run)]) == 0
    assert "targets are on MACs" in capsys.readouterr().out
    _, supernet = load_run(run)
    [row] = json.loads((run / "specialized.json").read_text())
    assert row["target"].startswith("macs<=")
    limit = float(row["target"].split("<=")[1])
    assert supernet.macs(row["arch"]) <= limit
    [folder] = (run / "exports").glob("[!.]*")
    assert (folder / "model.onnx").is_file()
    model = load_exported(folder).eval()
    r = row["arch"]["r"][0]
    with torch.no_grad():
        assert model(torch.randn(2, 3, r, r)).shape == (2, 10)
