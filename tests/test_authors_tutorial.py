"""The authors' tutorial with our commands: their OFA-MobileNetV3 w1.2 supernet (random
weights, saved in their layout) imported with ``ofa import-reference``, their accuracy
predictor and Note10 lookup tables as they ship them, ``ofa search`` under 25 ms,
``ofa predict`` and ``ofa specialize`` on the same files, ``ofa export`` of the winner,
and the export loaded. Bad files given to the commands fail in one line with status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from onceforall.cli import main
from onceforall.deploy.export import load_exported
from onceforall.training import load_config
from tests.test_authors_files import (  # noqa: F401 - the fixture, shared
    MBV3_PREDICTOR,
    NOTE10,
    NOTE10_RESOLUTIONS,
    their_latency_table,
    their_tutorial_predictor,
)
from tests.test_reference import _reference_supernet

tutorial_latency = pytest.importorskip("ofa.tutorial.latency_table")


def _image_folder(root, classes=("cat", "dog"), counts=(("train", 5), ("val", 2))) -> None:
    rng = np.random.default_rng(0)
    for split, count in counts:
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An imported run of their w1.2 supernet (1000 classes, as their files assume), a
    small image folder and a config whose splits fit it."""
    root = tmp_path_factory.mktemp("tutorial")
    reference = _reference_supernet("ofa_mbv3_d234_e346_k357_w1.2", num_classes=1000, seed=11)
    torch.save({"state_dict": reference.state_dict()}, root / "ofa.pth")
    settings = load_config("imagenet").to_dict()
    settings.update(holdout_size=4, bn_recal_images=4, num_workers=0, batch_size=4)
    (root / "config.yaml").write_text(yaml.safe_dump(settings))
    _image_folder(root / "images")
    args = ["import-reference", str(root / "ofa.pth"), "--name", "ofa_mbv3_d234_e346_k357_w1.2"]
    assert main([*args, "--out", str(root / "run"), "--config", str(root / "config.yaml")]) == 0
    return root


def test_their_tutorial_search_and_export_with_our_commands(
    run,
    capsys,
    their_latency_table,  # noqa: F811 - the fixture imported above
) -> None:
    files = ["--predictor", str(MBV3_PREDICTOR), "--latency-table", str(NOTE10)]
    found_path = run / "found.json"
    args = ["search", "--run", str(run / "run"), *files, "--target", "latency_ms<=25"]
    assert main([*args, "--generations", "100", "--out", str(found_path)]) == 0
    assert "searched resolutions 160, 176, 192, 208, 224" in capsys.readouterr().out
    [found] = json.loads(found_path.read_text())
    assert found["latency_ms"] <= 25 and found["searched_resolutions"] == list(NOTE10_RESOLUTIONS)
    # Their own code prices the winner the same: accuracy (a fraction) and Note10 ms.
    theirs = their_tutorial_predictor().predict_accuracy([found["arch"]]).item()
    assert found["predicted_accuracy"] == pytest.approx(100 * theirs, abs=1e-4)
    table = tutorial_latency.LatencyTable(device="note10", resolutions=NOTE10_RESOLUTIONS)
    assert found["latency_ms"] == pytest.approx(table.predict_efficiency(found["arch"]), abs=1e-6)

    # ofa predict says the same of that arch, in one JSON object.
    arch_file = run / "arch.json"
    arch_file.write_text(json.dumps(found["arch"]))
    capsys.readouterr()
    args = ["predict", "--run", str(run / "run"), "--arch", str(arch_file), *files, "--json"]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record) == {"predicted_accuracy", "macs", "params", "latency_ms"}
    for key in record:
        assert record[key] == pytest.approx(found[key], rel=1e-9), key

    # ofa export on the winner; the export loads without the supernet.
    out = run / "export"  # --arch: what ofa search wrote, as it is
    args = ["export", "--run", str(run / "run"), "--arch", str(found_path), "--out", str(out)]
    assert main([*args, "--data", str(run / "images"), "--no-onnx"]) == 0
    model = load_exported(out)
    r = found["arch"]["r"][0]
    with torch.no_grad():
        logits = model(torch.randn(2, 3, r, r))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    assert json.loads((out / "arch.json").read_text())["r"] == [r]


def test_specialize_uses_their_table_for_predictions_only(run, capsys) -> None:
    """A table of another device is not measured against here: the winner keeps its
    predicted Note10 latency, and its top-1 is measured on the images."""
    out = run / "specialized.json"
    args = ["specialize", "--run", str(run / "run"), "--data", str(run / "images")]
    args += ["--predictor", str(MBV3_PREDICTOR), "--latency-table", str(NOTE10)]
    args += ["--target", "latency_ms<=25", "--random-baseline", "0", "--generations", "20"]
    assert main([*args, "--out", str(out)]) == 0
    [row] = json.loads(out.read_text())
    assert row["predicted_latency_ms"] <= 25 and row["arch"]["r"][0] in NOTE10_RESOLUTIONS
    assert row["measured_latency_ms"] is None and row["meets_target"] is None
    assert 0 <= row["measured_accuracy"] <= 100


def test_bad_files_fail_the_commands_in_one_line(run, capsys, tmp_path) -> None:
    arch = json.dumps({"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": [160]})
    base = ["predict", "--run", str(run / "run"), "--arch", arch]
    (tmp_path / "cut.pth").write_bytes(MBV3_PREDICTOR.read_bytes()[:1000])
    (tmp_path / "empty").mkdir()
    for extra, named in (
        (["--predictor", str(tmp_path / "cut.pth")], tmp_path / "cut.pth"),
        (
            ["--predictor", str(MBV3_PREDICTOR), "--latency-table", str(tmp_path / "empty")],
            tmp_path / "empty",
        ),
    ):
        capsys.readouterr()
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ofa: ") and "\n" not in err and str(named) in err, err
    # An arch at a size their tables lack is refused with the sizes they have.
    capsys.readouterr()
    other = arch.replace("[160]", "[164]")
    files = ["--predictor", str(MBV3_PREDICTOR), "--latency-table", str(NOTE10)]
    assert main(["predict", "--run", str(run / "run"), "--arch", other, *files]) == 2
    assert "has 160, 176, 192, 208, 224" in capsys.readouterr().err


def test_ofa_run_takes_their_predictor_and_tables_as_they_are(run, capsys, tmp_path) -> None:
    """ofa run on the imported run: no training (the supernet is imported), no accuracy
    dataset or table of ours (their files replace them); it specialises under their
    Note10 table and exports the winner, which loads."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run / "run", copy)
    config = tmp_path / "config.yaml"
    settings = yaml.safe_load((copy / "config.yaml").read_text())
    settings["specialize"] = {
        "targets": ["latency_ms<=25"],
        "random_baseline": 0,
        "generations": 20,
    }
    config.write_text(yaml.safe_dump(settings))
    args = ["run", "--config", str(config), "--out", str(copy), "--data", str(run / "images")]
    files = ["--predictor", str(MBV3_PREDICTOR), "--latency-table", str(NOTE10)]
    assert main([*args, *files]) == 0
    printed = capsys.readouterr().out
    assert "supernet: reusing" in printed and "(imported)" in printed
    assert "accuracy dataset: not needed" in printed
    assert not (copy / "accuracy_dataset.jsonl").exists()
    assert not (copy / "latency_table.json").exists()
    [row] = json.loads((copy / "specialized.json").read_text())
    assert row["predicted_latency_ms"] <= 25 and row["measured_latency_ms"] is None
    assert row["arch"]["r"][0] in NOTE10_RESOLUTIONS
    model = load_exported(copy / "exports" / "latency_ms_25")
    r = row["arch"]["r"][0]
    with torch.no_grad():
        assert model(torch.randn(1, 3, r, r)).shape == (1, 1000)
