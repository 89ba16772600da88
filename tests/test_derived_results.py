"""What a run makes from its supernet says which supernet it was made from, and every
command that writes into a run holds its lock.

- The accuracy dataset's rows record the supernet's digest and the numbers of images
  they were measured with; rows measured otherwise are never mixed into one file.
- The run's predictor records the supernet its rows came from and is refused once the
  supernet changed (``ofa run`` measures and fits again: tests/test_pipeline.py).
- ``acc-dataset``, ``train-predictor``, ``latency-table``, ``latency-bundle``,
  ``specialize``, ``finetune`` and ``import-reference`` are refused at once, in one
  line, while another process writes into the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onceforall.cli import main
from onceforall.predictors import AccuracyPredictor, read_accuracy_dataset
from onceforall.storage.checkpoint import load_latest_checkpoint, save_checkpoint
from onceforall.storage.run_layout import RunLayout
from onceforall.training import load_run
from onceforall.training.run_dir import supernet_digest
from tests.conftest import copy_run, needs_fashion_mnist

pytestmark = needs_fashion_mnist

FEW_IMAGES = ["--calibration-images", "32", "--eval-images", "32"]


def _one_line_error(capsys: pytest.CaptureFixture, *expected: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def test_acc_dataset_never_mixes_rows_measured_otherwise(trained_run, tmp_path, capsys) -> None:
    run = copy_run(trained_run, tmp_path)
    dataset = RunLayout(run).accuracy_dataset
    assert main(["acc-dataset", "--run", str(run), "--num-archs", "3", *FEW_IMAGES]) == 0
    rows = read_accuracy_dataset(dataset)
    assert len(rows) == 3
    expected = {
        "supernet_sha256": supernet_digest(run),
        "calibration_images": 32,
        "eval_images": 32,
    }
    assert all(r["measured_with"] == expected for r in rows)
    assert len(expected["supernet_sha256"]) == 64
    capsys.readouterr()

    # Fewer archs than the file holds: those asked for are reported, none measured.
    before = dataset.read_text()
    assert main(["acc-dataset", "--run", str(run), "--num-archs", "2", *FEW_IMAGES]) == 0
    assert capsys.readouterr().out.startswith("2 archs in ")
    assert dataset.read_text() == before

    # Other numbers of images: refused, naming what differs; the file is untouched.
    other = ["--calibration-images", "32", "--eval-images", "48"]
    assert main(["acc-dataset", "--run", str(run), "--num-archs", "4", *other]) == 2
    _one_line_error(capsys, "measured with other settings", "eval_images: 32 -> 48")
    assert dataset.read_text() == before


def _replace_supernet_weights(run: Path) -> None:
    """What resumed training does to a run: a newer supernet checkpoint."""
    path, state = load_latest_checkpoint(RunLayout(run).supernet)
    state["model"] = {
        k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()
    }
    save_checkpoint(RunLayout(run).supernet, "supernet-later", state, keep=2)


def test_a_changed_supernet_makes_its_dataset_and_predictor_stale(
    trained_run, tmp_path, capsys
) -> None:
    run = copy_run(trained_run, tmp_path)
    assert main(["acc-dataset", "--run", str(run), "--num-archs", "4", *FEW_IMAGES]) == 0
    fit = ["train-predictor", "--run", str(run), "--val-fraction", "0", "--epochs", "3"]
    assert main(fit) == 0
    digest = supernet_digest(run)
    _, net = load_run(run)
    predictor = AccuracyPredictor.load(RunLayout(run).accuracy_predictor, space=net.space)
    assert predictor.supernet_sha256 == digest
    search = ["search", "--run", str(run), "--target", "macs<=100M"]
    search += ["--generations", "2", "--population", "8"]
    assert main(search) == 0
    capsys.readouterr()

    _replace_supernet_weights(run)
    assert supernet_digest(run) != digest
    assert main(search) == 2
    _one_line_error(capsys, "fitted on sub-networks of another supernet", "ofa acc-dataset")
    assert main(["acc-dataset", "--run", str(run), "--num-archs", "4", *FEW_IMAGES]) == 2
    _one_line_error(capsys, f"supernet_sha256: '{digest}' -> '{supernet_digest(run)}'")
    # A predictor given by path (another run's, say) is the user's choice: not refused.
    given = tmp_path / "given.pt"
    given.write_bytes(RunLayout(run).accuracy_predictor.read_bytes())
    assert main([*search, "--predictor", str(given)]) == 0


HOLDER = """
import sys, time
from onceforall.storage.run_guard import claim_run_directory, run_lock
claim_run_directory(sys.argv[1])
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_every_command_writing_into_a_run_is_refused_while_another_writes(
    trained_run, tmp_path, capsys
) -> None:
    run = copy_run(trained_run, tmp_path)
    _, net = load_run(run)
    AccuracyPredictor(net.space).save(RunLayout(run).accuracy_predictor)  # for specialize
    rows = [{"arch": net.space.sample(i).to_dict(), "accuracy": 50.0 + i} for i in range(4)]
    RunLayout(run).accuracy_dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    arch = net.space.sample(0).to_json()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        commands = [
            ["acc-dataset", "--run", str(run), "--num-archs", "2"],
            ["train-predictor", "--run", str(run), "--val-fraction", "0", "--epochs", "1"],
            ["latency-table", "--run", str(run), "--repeats", "1"],
            ["specialize", "--run", str(run), "--target", "macs<=100M", "--generations", "1"],
            ["latency-bundle", "--run", str(run), "--out", str(tmp_path / "bundle.zip")],
            ["finetune", "--run", str(run), "--arch", arch, "--out", str(tmp_path / "tuned")],
        ]
        for command in commands:
            assert main(command) == 2, command
            _one_line_error(capsys, f"in use by process {holder.pid} ")
    finally:
        holder.kill()
        holder.wait()
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


def test_import_reference_refuses_a_folder_that_holds_a_run(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    weights = tmp_path / "ofa.pth"
    _, net = load_run(run)
    torch.save({"state_dict": net.state_dict()}, weights)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    args = ["import-reference", str(weights), "--name", "ofa_mbv3_w1.0", "--out", str(run)]
    assert main(args) == 2
    _one_line_error(capsys, "is not empty: import-reference writes a new run directory")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
