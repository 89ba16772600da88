"""SIGKILL at any moment leaves a consistent state: an export folder loads as the old or
the new complete export, never a mix, and a training run resumes from its last complete
checkpoint to exactly the weights of a run never killed. The killing is done by
tests/crash_harness.py (see there how the kill points are chosen). Slow (about a minute
each): ``make test-slow``, which CI runs after ``make test``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import copy_run, needs_fashion_mnist

pytestmark = [
    needs_fashion_mnist,
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="the harness forks its writers"),
]

REPO = Path(__file__).resolve().parents[1]
KILLS = 24


def _harness(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.crash_harness", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_killed_export_leaves_the_old_or_the_new_complete_export(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path)
    report = _harness("export", str(run), str(tmp_path / "export"), str(KILLS), "0")
    assert len(report["kills"]) == KILLS
    # The kill points fall both before the new export is in place and after.
    assert {left for _, left in report["kills"]} == {"old", "new"}, report


def test_killed_training_resumes_to_the_weights_of_an_unkilled_run(tmp_path):
    from tests.test_training import TINY

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY, "checkpoint_every_steps": 1}))
    report = _harness(
        "train", str(config), str(tmp_path / "run"), str(tmp_path / "reference"), str(KILLS), "0"
    )
    kills = [k for k in report["kills"] if k[1] == "killed"]
    assert len(kills) >= 20, report
    assert report["resumes"] >= 1
