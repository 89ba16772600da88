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

from onceforall.cli import main
from onceforall.errors import RunDirectoryError
from onceforall.storage.run_guard import (
    MARKER_FORMAT,
    claim_run_directory,
    remove_run_directory,
    run_lock,
)
from onceforall.storage.run_layout import RunLayout
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
