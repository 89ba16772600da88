"""``ofa finetune``: one sub-network trained on by itself, with the guarantees of
``ofa train`` (exact resume, NaN stop, identical torchrun workers), ending in an export
whose metadata records the fine-tuning. Real training steps on Fashion-MNIST."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from onceforall.cli import main
from onceforall.deploy.export import load_exported
from onceforall.deploy.finetune_step import finetune_work_dir
from onceforall.storage.checkpoint import list_checkpoints
from onceforall.storage.run_layout import RunLayout
from onceforall.training import load_run
from onceforall.training.distributed import deterministic_kernels
from tests.conftest import copy_run, metric_records, needs_fashion_mnist

pytestmark = needs_fashion_mnist

ARCH = json.dumps(
    {
        "ks": [3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5],
        "e": [3, 4, 6, 3, 4, 6, 3, 4, 6, 3, 4, 6, 3, 4, 6, 3, 4, 6, 3, 4],
        "d": [2, 3, 4, 2, 3],
        "r": [28],
    }
)


def _run_with(trained_run: Path, where: Path, **settings: object) -> Path:
    """A copy of the trained run whose config.yaml has ``settings`` changed."""
    run = copy_run(trained_run, where)
    config = run / "config.yaml"
    text = config.read_text()
    for key, value in settings.items():
        lines = [line for line in text.splitlines() if not line.startswith(f"{key}:")]
        text = "\n".join([*lines, f"{key}: {value}"]) + "\n"
    config.write_text(text)
    return run


def _command(run: Path, out: Path, *extra: str) -> list[str]:
    """One epoch unless ``extra`` says otherwise (a later --epochs wins)."""
    return [
        "finetune",
        "--run",
        str(run),
        "--arch",
        ARCH,
        "--out",
        str(out),
        "--epochs",
        "1",
        *extra,
    ]


def _weights(export: Path) -> dict[str, torch.Tensor]:
    return load_exported(export).state_dict()


@pytest.fixture(scope="module")
def tuned(trained_run, tmp_path_factory) -> tuple[Path, Path]:
    """A run (checkpoints every 3 steps) and the export of one uninterrupted fine-tuning."""
    where = tmp_path_factory.mktemp("finetune")
    run = _run_with(trained_run, where, checkpoint_every_steps=3)
    out = where / "exports" / "tuned"
    assert main(_command(run, out, "--lr", "0.01", "--warmup-epochs", "0.5")) == 0
    return run, out


def test_finetune_exports_the_network_and_records_what_it_did(tuned, tmp_path) -> None:
    run, out = tuned
    metadata = json.loads((out / "metadata.json").read_text())
    record = metadata["finetune"]
    assert record["epochs"] == 1 and record["lr"] == 0.01 and record["warmup_epochs"] == 0.5
    assert record["steps"] == 10  # 320 training images, batch 32
    assert record["kd_ratio"] == 1.0 and "largest sub-network" in record["teacher"]
    assert record["top1_after"] == metadata["top1"]
    assert 0 <= record["top1_before"] <= 100
    assert metadata["source_run"] == str(run)
    model = load_exported(out)
    assert model.arch.to_dict() == json.loads(ARCH)
    # The training really changed the network the supernet holds.
    _, net = load_run(run)
    extracted = net.extract(model.arch).state_dict()
    tuned_weights = model.state_dict()
    changed = [k for k in tuned_weights if not torch.equal(extracted[k], tuned_weights[k])]
    assert any("conv.weight" in k for k in changed)
    # Its metrics log: the start, the epoch (workers' digests included), the end.
    records = metric_records(finetune_work_dir(RunLayout(run), out))
    kinds = [r["type"] for r in records]
    assert kinds[:2] == ["stage_start", "finetune"] and kinds[-1] == "done"
    assert kinds.count("epoch") == 1

    # It can start from an export too (an imported authors' network, say): this one.
    again = tmp_path / "again"
    command = ["finetune", "--run", str(run), "--from", str(out), "--out", str(again)]
    assert main([*command, "--epochs", "0.3", "--no-distill"]) == 0
    record = json.loads((again / "metadata.json").read_text())["finetune"]
    assert record["start"] == str(out) and record["kd_ratio"] == 0.0 and record["steps"] == 3
    assert record["top1_before"] == pytest.approx(metadata["top1"])


@pytest.mark.parametrize("kernels", [[], pytest.param(["--deterministic"], marks=pytest.mark.slow)])
def test_stopped_and_resumed_ends_with_the_weights_of_an_uninterrupted_one(
    tuned, tmp_path, kernels
):
    run, whole = tuned  # trained without --deterministic: on the CPU it changes nothing
    stopped = tmp_path / ("stopped" + "".join(kernels))  # its work folder in the run too
    command = _command(run, stopped, "--lr", "0.01", "--warmup-epochs", "0.5", *kernels)
    assert main([*command, "--max-steps", "4"]) == 0
    assert not stopped.exists()  # no export until the end
    assert main(command) == 2  # its checkpoints are there: --resume
    assert main([*command, "--resume"]) == 0
    expected, got = _weights(whole), _weights(stopped)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


@pytest.mark.slow  # two ofa finetune processes, about 30 s (make test-slow)
def test_sigkill_then_resume_continues_exactly(trained_run, tmp_path) -> None:
    run = _run_with(trained_run, tmp_path, checkpoint_every_steps=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "onceforall.cli"]
    whole = tmp_path / "whole"
    subprocess.run([*cli, *_command(run, whole, "--epochs", "2")], check=True, env=env)
    killed = tmp_path / "killed"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen([*cli, *_command(run, killed, "--epochs", "2")], env=env, **quiet)
    checkpoints = finetune_work_dir(RunLayout(run), killed) / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not any(
        "-s6" in p.name or "-s8" in p.name for p in list_checkpoints(checkpoints)
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list_checkpoints(checkpoints), "must resume from a checkpoint, not from scratch"
    resume = [*cli, *_command(run, killed, "--epochs", "2", "--resume")]
    done = subprocess.run(resume, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    expected, got = _weights(whole), _weights(killed)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_a_diverging_finetune_stops_and_exports_nothing(trained_run, tmp_path, capsys) -> None:
    run = copy_run(trained_run, tmp_path)
    out = tmp_path / "nan"
    assert main(_command(run, out, "--lr", "1e12")) == 3
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("ofa: fine-tuning stopped: loss is"), last
    assert not out.exists()


@pytest.mark.slow  # two torchrun workers, about 20 s (make test-slow)
@pytest.mark.skipif(sys.platform != "linux", reason="gloo on linux")
def test_two_workers_stay_identical(trained_run, tmp_path) -> None:
    run = copy_run(trained_run, tmp_path)
    out = tmp_path / "ddp"
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29735"]
    # --run-dir: torchrun would read --run as its own --run-path
    finetune = ["finetune", "--run-dir", str(run), "--arch", ARCH, "--out", str(out)]
    command = [sys.executable, *torchrun, "-m", "onceforall.cli", *finetune]
    command += ["--device", "cpu", "--epochs", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    epochs = [
        r for r in metric_records(finetune_work_dir(RunLayout(run), out)) if r["type"] == "epoch"
    ]
    assert len(epochs) == 2
    for record in epochs:
        params = record["consistency"]["params"]
        assert len(params) == 2 and params[0] == params[1]
    assert json.loads((out / "metadata.json").read_text())["finetune"]["steps"] == 10


def test_resuming_with_another_arch_is_refused(tuned, capsys) -> None:
    run, out = tuned
    other = json.loads(ARCH)
    other["ks"] = [7] * 20
    command = ["finetune", "--run", str(run), "--arch", json.dumps(other), "--out", str(out)]
    assert main([*command, "--resume"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "holds the checkpoints of a fine-tuning of another arch" in line, line


def test_deterministic_kernels_only_while_the_block_runs(monkeypatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_kernels(False):
        assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError, match="inside"), deterministic_kernels(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        raise RuntimeError("inside")  # the settings come back on errors too
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
