"""A run directory knows it is one (its marker) and has one writer at a time (its lock):
``--fresh`` deletes only run directories, a second writer is refused at once naming the
process that holds the lock, and a killed writer leaves the directory unlocked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from onceforall.cli import main
from onceforall.errors import ConfigError, RunDirectoryError
from onceforall.storage.run_guard import (
    MARKER_FORMAT,
    claim_run_directory,
    remove_run_directory,
    run_lock,
)
from onceforall.storage.run_layout import RunLayout
from onceforall.training import TrainConfig, train
from tests.conftest import needs_fashion_mnist


def _marker(root: Path) -> dict:
    return json.loads(RunLayout(root).marker.read_text())


def test_a_new_or_empty_folder_is_claimed_and_marked(tmp_path: Path) -> None:
    claim_run_directory(tmp_path / "new" / "run")
    assert _marker(tmp_path / "new" / "run")["format"] == MARKER_FORMAT
    (tmp_path / "empty").mkdir()
    claim_run_directory(tmp_path / "empty")
    assert _marker(tmp_path / "empty")["format"] == MARKER_FORMAT
    claim_run_directory(tmp_path / "empty")  # claiming a run again is fine


def test_a_folder_that_is_not_a_run_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match="not empty and is not a run directory"):
        claim_run_directory(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    with pytest.raises(RunDirectoryError, match="is a file"):
        claim_run_directory(tmp_path / "notes.txt")


def test_a_run_from_before_markers_is_adopted(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("supernet: ofa_mbv3_w1.0\n")
    claim_run_directory(tmp_path)
    assert _marker(tmp_path)["format"] == MARKER_FORMAT


def test_a_run_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    RunLayout(tmp_path).marker.write_text(json.dumps({"format": MARKER_FORMAT + 1}))
    with pytest.raises(RunDirectoryError, match="upgrade onceforall"):
        claim_run_directory(tmp_path)
    RunLayout(tmp_path).marker.write_text("{not json")
    with pytest.raises(RunDirectoryError, match="damaged"):
        claim_run_directory(tmp_path)


def test_fresh_deletes_only_run_directories(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(RunDirectoryError, match="refuses to delete"):
        remove_run_directory(home)
    assert (home / "thesis.tex").read_text() == "years of work"

    run = tmp_path / "run"
    claim_run_directory(run)
    (run / "checkpoints").mkdir()
    remove_run_directory(run)
    assert not run.exists()
    (tmp_path / "empty").mkdir()
    remove_run_directory(tmp_path / "empty")
    remove_run_directory(tmp_path / "never-created")  # nothing to delete: fine


HOLDER = textwrap.dedent(
    """
    import sys, time
    from onceforall.storage.run_guard import claim_run_directory, run_lock
    claim_run_directory(sys.argv[1])
    with run_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(600)
    """
)


@pytest.fixture
def held_run(tmp_path: Path):
    """A run directory whose lock another process holds (killed with SIGKILL after)."""
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield run, holder
    finally:
        holder.kill()
        holder.wait()


def test_a_second_writer_is_refused_naming_the_holder(held_run) -> None:
    run, holder = held_run
    with pytest.raises(RunDirectoryError, match=f"in use by process {holder.pid} "):
        with run_lock(run):
            pass
    with pytest.raises(RunDirectoryError, match="in use"):
        remove_run_directory(run)  # --fresh does not delete under a running writer
    assert RunLayout(run).marker.is_file()


def test_a_killed_writer_leaves_the_directory_unlocked(held_run) -> None:
    run, holder = held_run
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with run_lock(run):
        with run_lock(run):  # re-entrant within one process (ofa run, then training)
            pass
        assert f"process {os.getpid()} " in RunLayout(run).lock.read_text()


@needs_fashion_mnist
def test_the_cli_refuses_in_one_line(
    held_run, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run, holder = held_run
    args = ["--config", "fashion-mnist-quick", "--data", "fashion-mnist", "--max-steps", "1"]
    assert main(["train", *args, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"process {holder.pid}" in err
    assert "Traceback" not in err

    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    run_args = ["run", "--config", "fashion-mnist-quick", "--data", "fashion-mnist"]
    assert main([*run_args, "--out", str(home), "--fresh"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refuses to delete" in err
    assert (home / "thesis.tex").read_text() == "years of work"
    # A missing dataset is reported before anything is deleted.
    claim_run_directory(tmp_path / "old-run")
    missing = ["run", "--config", "fashion-mnist-quick", "--data", str(tmp_path / "nowhere")]
    assert main([*missing, "--out", str(tmp_path / "old-run"), "--fresh"]) == 2
    assert RunLayout(tmp_path / "old-run").marker.is_file()


# --------------------------------------------------- what a run was made with is checked


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A tiny run stopped by --max-steps after 2 steps (checkpoints, not finished)."""
    from tests.test_training import TINY

    run = tmp_path_factory.mktemp("stopped") / "run"
    train(TrainConfig.from_dict(TINY), "fashion-mnist", run, progress=False, max_steps=2)
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / "copy"))


@needs_fashion_mnist
def test_resume_refuses_a_config_that_changes_the_result(stopped_run, tmp_path) -> None:
    from tests.test_training import TINY

    run = _copy(stopped_run, tmp_path)
    changed = TrainConfig.from_dict({**TINY, "batch_size": 32, "seed": 1})
    with pytest.raises(ConfigError, match=r"batch_size: 16 -> 32; seed: 0 -> 1") as info:
        train(changed, "fashion-mnist", run, resume=True, progress=False, max_steps=3)
    assert "num_workers" in str(info.value)  # what may change is named
    stages = [dict(s) for s in TINY["stages"]]
    stages[1]["lr"] = 0.5
    with pytest.raises(ConfigError, match=r"stages\.kernel\.lr: 0\.03 -> 0\.5"):
        train(
            TrainConfig.from_dict({**TINY, "stages": stages}),
            "fashion-mnist",
            run,
            resume=True,
            progress=False,
            max_steps=3,
        )
    # The config on disk is the original still; a safe change resumes.
    assert TrainConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text())).batch_size == 16
    safe = TrainConfig.from_dict(
        {**TINY, "checkpoint_every_steps": 1, "keep_checkpoints": 3, "deterministic": True}
    )
    result = train(safe, "fashion-mnist", run, resume=True, progress=False, max_steps=3)
    assert result["stopped_at"]["global_step"] == 3


@needs_fashion_mnist
def test_training_over_a_run_or_resuming_nothing_is_refused(stopped_run, tmp_path) -> None:
    from tests.test_training import TINY

    run = _copy(stopped_run, tmp_path)
    config = TrainConfig.from_dict(TINY)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(RunDirectoryError, match="already holds checkpoints.*--resume.*--fresh"):
        train(config, "fashion-mnist", run, progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    with pytest.raises(ConfigError, match="--max-steps 2 is not beyond the step the run resumes"):
        train(config, "fashion-mnist", run, resume=True, progress=False, max_steps=2)
    with pytest.raises(RunDirectoryError, match="nothing to resume"):
        train(config, "fashion-mnist", tmp_path / "new", resume=True, progress=False)


@needs_fashion_mnist
def test_ofa_train_fresh_starts_over(stopped_run, tmp_path, capsys) -> None:
    from tests.test_training import TINY

    run = _copy(stopped_run, tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(TINY))
    args = ["train", "--config", str(config), "--out", str(run), "--max-steps", "1"]
    assert main(args) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main([*args, "--fresh"]) == 0
    names = [p.name for p in (run / "checkpoints").iterdir()]
    assert names == ["ckpt-00000001-full-e0-b1-s1.pt"]  # the old ones are gone


@needs_fashion_mnist
def test_a_stage_choice_the_supernet_lacks_is_refused_at_start_up(tmp_path) -> None:
    from onceforall.training import Trainer
    from tests.test_training import TINY

    stages = [dict(s) for s in TINY["stages"]]
    stages[2]["kernel_sizes"] = [3, 9]  # the last stage: refused before the first step
    with pytest.raises(ConfigError, match=r"stage 'expand' opens kernel_sizes \[9\]"):
        Trainer(TrainConfig.from_dict({**TINY, "stages": stages}), "fashion-mnist", tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_a_one_class_dataset_is_refused(tmp_path) -> None:
    import numpy as np
    from PIL import Image

    from onceforall.training import Trainer
    from tests.test_training import TINY

    for split in ("train", "val"):
        folder = tmp_path / "data" / split / "only"
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    config = TrainConfig.from_dict({**TINY, "holdout_size": 2, "bn_recal_images": 2})
    with pytest.raises(ConfigError, match=r"has 1 class\(es\) \(only\): classification needs"):
        Trainer(config, str(tmp_path / "data"), tmp_path / "run")
