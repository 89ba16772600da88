"""Checkpoints: exact round trips (model, optimizer, scheduler, RNG), retention, detection of
truncation and corruption with fallback, refusal of code-executing pickles, and survival of
real SIGKILLs of a writer process."""

from __future__ import annotations

import hashlib
import io
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from onceforall.storage.checkpoint import (
    CheckpointError,
    CheckpointWarning,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from onceforall.training.rng_state import capture_rng_state, restore_rng_state

# ----------------------------------------------------------------------------- helpers


def _model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return model, optimizer, scheduler


def _train_step(model, optimizer, scheduler, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 8, generator=gen)
    y = torch.randint(0, 3, (6,), generator=gen)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    scheduler.step()


def _small_state(value: float) -> dict:
    return {"step": int(value), "weights": torch.full((64,), value), "name": f"v{value}"}


def _two_checkpoints(tmp_path: Path) -> tuple[Path, Path]:
    old = save_checkpoint(tmp_path, "100", _small_state(100.0))
    new = save_checkpoint(tmp_path, "200", _small_state(200.0))
    return old, new


def _assert_falls_back(tmp_path: Path, old: Path, bad: Path) -> None:
    with pytest.warns(CheckpointWarning, match=bad.name):
        path, state = load_latest_checkpoint(tmp_path)
    assert path == old
    assert state["step"] == 100 and torch.equal(state["weights"], torch.full((64,), 100.0))


# ----------------------------------------------------------------------------- round trip


def test_round_trip_restores_model_optimizer_scheduler_and_rng(tmp_path: Path) -> None:
    model, optimizer, scheduler = _model_and_optimizer()
    for step in range(3):  # real steps: momentum buffers and BN statistics exist
        _train_step(model, optimizer, scheduler, seed=step)
    assert all("momentum_buffer" in s for s in optimizer.state.values())

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # non-trivial gauss_next cache in both generators
    np.random.standard_normal()
    extras = {
        "epoch": 7,
        "best": 0.8125,
        "done": False,
        "phase": "kernel",
        "nothing": None,
        "history": [1.5, 2.5, {"nested": [1, "a", None]}],
        "shape": (3, 4),
    }
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng_state(),
        **extras,
    }
    path = save_checkpoint(tmp_path, "step3", state)
    assert path.name == "ckpt-00000001-step3.pt"
    expected_draws = (random.random(), random.gauss(0, 1), np.random.rand(5), torch.rand(5))

    # Continue the original run one step; then resume from the file and do the same step.
    _train_step(model, optimizer, scheduler, seed=99)
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)

    loaded = load_checkpoint(path)
    restored_model, restored_optimizer, restored_scheduler = _model_and_optimizer(seed=5)
    restored_model.load_state_dict(loaded["model"])
    restored_optimizer.load_state_dict(loaded["optimizer"])
    restored_scheduler.load_state_dict(loaded["scheduler"])
    restore_rng_state(loaded["rng"])
    _train_step(restored_model, restored_optimizer, restored_scheduler, seed=99)

    for (name, a), (_, b) in zip(model.state_dict().items(), restored_model.state_dict().items()):
        assert torch.equal(a, b), name
    for p, q in zip(model.parameters(), restored_model.parameters()):
        assert torch.equal(
            optimizer.state[p]["momentum_buffer"], restored_optimizer.state[q]["momentum_buffer"]
        )
    assert scheduler.get_last_lr() == restored_scheduler.get_last_lr()
    assert {k: loaded[k] for k in extras} == extras

    draws = (random.random(), random.gauss(0, 1), np.random.rand(5), torch.rand(5))
    assert draws[0] == expected_draws[0] and draws[1] == expected_draws[1]
    np.testing.assert_array_equal(draws[2], expected_draws[2])
    assert torch.equal(draws[3], expected_draws[3])


def test_rng_state_is_loadable_with_weights_only() -> None:
    buffer = io.BytesIO()
    torch.save(capture_rng_state(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state) >= {"python", "numpy", "torch"}


def test_save_refuses_values_weights_only_cannot_load(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"state\['meta'\]\['best'\].*numpy.*\.item\(\)"):
        save_checkpoint(tmp_path, "x", {"meta": {"best": np.float64(0.5)}})
    with pytest.raises(TypeError, match=r"state\['arr'\].*ndarray"):
        save_checkpoint(tmp_path, "x", {"arr": np.zeros(3)})
    with pytest.raises(TypeError, match=r"state\['fn'\]\[0\]"):
        save_checkpoint(tmp_path, "x", {"fn": [print]})
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tag", ["", "../escape", "a/b", ".hidden", "-x", "a b", "x" * 101])
def test_save_refuses_bad_step_tags(tmp_path: Path, tag: str) -> None:
    with pytest.raises(ValueError, match="step_tag"):
        save_checkpoint(tmp_path, tag, {})


# ----------------------------------------------------------------------------- retention


def test_keep_two_keeps_exactly_the_two_newest(tmp_path: Path) -> None:
    for step in range(1, 6):
        save_checkpoint(tmp_path, f"step{step}", _small_state(float(step)), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt-00000004-step4.pt",
        "ckpt-00000005-step5.pt",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-00000004-step4.pt",
        "ckpt-00000005-step5.pt",
    ]
    path, state = load_latest_checkpoint(tmp_path)
    assert path.name == "ckpt-00000005-step5.pt" and state["step"] == 5

    save_checkpoint(tmp_path, "step6", _small_state(6.0), keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000006-step6.pt"]
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, "step7", _small_state(7.0), keep=0)


def test_order_is_by_counter_not_by_tag(tmp_path: Path) -> None:
    for tag in ["9", "10", "b", "a"]:
        save_checkpoint(tmp_path, tag, {"tag": tag}, keep=10)
    assert [p.name.split("-", 2)[2] for p in list_checkpoints(tmp_path)] == [
        "9.pt",
        "10.pt",
        "b.pt",
        "a.pt",
    ]
    assert load_latest_checkpoint(tmp_path)[1] == {"tag": "a"}


def test_no_checkpoints_gives_none(tmp_path: Path) -> None:
    assert load_latest_checkpoint(tmp_path) is None
    assert load_latest_checkpoint(tmp_path / "not-created-yet") is None
    assert list_checkpoints(tmp_path / "not-created-yet") == []


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # the checksum fails; header, footer and length still agree
    path.write_bytes(bytes(data))


def _verified_names(directory: Path) -> list[str]:
    names = []
    for path in list_checkpoints(directory):
        load_checkpoint(path)  # raises if it does not verify
        names.append(path.name)
    return names


def test_a_damaged_newest_moved_aside_on_resume_no_longer_counts_as_kept(
    tmp_path: Path,
) -> None:
    """The writer resumes from the older good checkpoint; its next save keeps two good
    ones (the damaged file used to count as one of the two, and the good one was
    deleted)."""
    for step in range(1, 4):
        save_checkpoint(tmp_path, f"step{step}", _small_state(float(step)), keep=2)
    good, damaged = list_checkpoints(tmp_path)
    _flip_a_byte(damaged)
    with pytest.warns(CheckpointWarning, match="moving it aside"):
        path, state = load_latest_checkpoint(tmp_path, move_aside=True)
    assert path == good and state["step"] == 2
    assert (tmp_path / f"{damaged.name}.corrupt").is_file() and not damaged.exists()
    new = save_checkpoint(tmp_path, "step3-again", _small_state(3.0), keep=2)
    assert _verified_names(tmp_path) == [good.name, new.name]
    assert (tmp_path / f"{damaged.name}.corrupt").is_file()  # kept for inspection


def test_a_reader_moves_nothing(tmp_path: Path) -> None:
    good, damaged = _two_checkpoints(tmp_path)
    _flip_a_byte(damaged)
    with pytest.warns(CheckpointWarning):
        assert load_latest_checkpoint(tmp_path)[0] == good
    assert damaged.is_file()
    # Nor does the writer when nothing verifies: the files stay for the user to inspect.
    _flip_a_byte(good)
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError):
        load_latest_checkpoint(tmp_path, move_aside=True)
    assert good.is_file() and damaged.is_file()


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"OFACKPT\x00" + bytes(100)])
def test_a_stray_file_named_like_a_checkpoint_cannot_displace_the_real_ones(
    tmp_path: Path, content: bytes
) -> None:
    """A file with a checkpoint's name and a huge counter used to survive retention
    while every real checkpoint was deleted, and set the counter of the next ones."""
    for step in range(1, 3):
        save_checkpoint(tmp_path, f"step{step}", _small_state(float(step)), keep=2)
    stray = tmp_path / "ckpt-99999999-stray.pt"
    stray.write_bytes(content)
    new = save_checkpoint(tmp_path, "step3", _small_state(3.0), keep=2)
    assert new.name == "ckpt-00000003-step3.pt"
    assert _verified_names(tmp_path) == ["ckpt-00000002-step2.pt", new.name]
    assert (tmp_path / "ckpt-99999999-stray.pt.corrupt").read_bytes() == content


# ----------------------------------------------------------------------------- corruption


@pytest.mark.parametrize("keep_fraction", [0.0, 0.001, 0.02, 0.5, 0.97, 0.9999])
def test_truncated_newest_is_detected_and_skipped(tmp_path: Path, keep_fraction: float) -> None:
    old, new = _two_checkpoints(tmp_path)
    data = new.read_bytes()
    cut = int(len(data) * keep_fraction)
    assert cut < len(data)
    new.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_checkpoint(new)
    assert str(new) in str(info.value) and info.value.path == new
    _assert_falls_back(tmp_path, old, new)


@pytest.mark.parametrize("cut", [1, 7, 8, 15, 16, 40, 47, 48, 49])
def test_truncated_by_a_few_bytes_at_either_end(tmp_path: Path, cut: int) -> None:
    old, new = _two_checkpoints(tmp_path)
    data = new.read_bytes()
    new.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match=f"{new.name}.*truncated"):
        load_checkpoint(new)
    new.write_bytes(data[:-cut])
    with pytest.raises(CheckpointError, match=f"{new.name}.*truncated"):
        load_checkpoint(new)
    _assert_falls_back(tmp_path, old, new)


@pytest.mark.parametrize("where", ["middle", "payload_start", "footer_checksum", "last_byte"])
def test_one_flipped_byte_is_detected(tmp_path: Path, where: str) -> None:
    old, new = _two_checkpoints(tmp_path)
    data = bytearray(new.read_bytes())
    index = {
        "middle": len(data) // 2,
        "payload_start": 16,
        "footer_checksum": len(data) - 20,
        "last_byte": len(data) - 1,
    }[where]
    data[index] ^= 0x01
    new.write_bytes(bytes(data))
    message = "damaged" if where == "last_byte" else "checksum mismatch"
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(new)
    assert str(new) in str(info.value)
    _assert_falls_back(tmp_path, old, new)


def test_foreign_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    old = save_checkpoint(tmp_path, "100", _small_state(100.0))
    plain = tmp_path / "ckpt-00000002-plain.pt"
    torch.save(_small_state(5.0), plain)  # a plain torch.save file, no integrity record
    with pytest.raises(CheckpointError, match=f"{plain.name}.*not a checkpoint"):
        load_checkpoint(plain)
    _assert_falls_back(tmp_path, old, plain)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path / "missing.pt")


def test_all_corrupt_raises_naming_every_file(tmp_path: Path) -> None:
    old, new = _two_checkpoints(tmp_path)
    for path in (old, new):
        path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError) as info:
        load_latest_checkpoint(tmp_path)
    assert old.name in str(info.value) and new.name in str(info.value)


def test_leftover_temporary_file_is_ignored_then_cleaned(tmp_path: Path) -> None:
    old, new = _two_checkpoints(tmp_path)
    # What a writer killed mid-save leaves: a hidden temp holding a partial next checkpoint.
    temp = tmp_path / ".ckpt-00000003-300.pt.4242.deadbeef.tmp"
    temp.write_bytes(new.read_bytes()[:-100])
    assert list_checkpoints(tmp_path) == [old, new]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path, state = load_latest_checkpoint(tmp_path)
    assert path == new and state["step"] == 200

    third = save_checkpoint(tmp_path, "300", _small_state(300.0))
    assert third.name == "ckpt-00000003-300.pt"
    assert not temp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [new.name, third.name]


# ----------------------------------------------------------------------------- untrusted files


class _Exploit:
    """Pickles as a call of ``exec`` that creates a marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _framed(payload: bytes) -> bytes:
    """A checkpoint file built from the documented layout, with a valid checksum."""
    header = b"OFACKPT\x00" + struct.pack("<II", 1, 0)
    digest = hashlib.sha256(header + payload).digest()
    return header + payload + struct.pack("<Q32s8s", len(payload), digest, b"OFACKEND")


def test_documented_layout_is_what_is_written(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, "x", {"a": torch.arange(5)})
    data = path.read_bytes()
    assert _framed(data[16:-48]) == data
    assert torch.equal(
        torch.load(io.BytesIO(data[16:-48]), weights_only=True)["a"], torch.arange(5)
    )


def test_code_executing_pickle_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.ones(2)}, "evil": _Exploit(marker)}, buffer)
    payload = buffer.getvalue()

    # Control: the payload really is an exploit when loaded unsafely.
    torch.load(io.BytesIO(payload), weights_only=False)
    assert marker.read_text() == "pwned"
    marker.unlink()

    ckpt_dir = tmp_path / "ckpts"
    good = save_checkpoint(ckpt_dir, "good", _small_state(100.0))
    evil = ckpt_dir / "ckpt-00000002-evil.pt"
    evil.write_bytes(_framed(payload))
    with pytest.raises(CheckpointError, match=f"{evil.name}.*refused.*weights_only"):
        load_checkpoint(evil)
    assert not marker.exists()
    _assert_falls_back(ckpt_dir, good, evil)
    assert not marker.exists()


# ----------------------------------------------------------------------------- SIGKILL

_WRITER = """
import sys, torch
from onceforall.storage.checkpoint import load_latest_checkpoint, save_checkpoint
directory = sys.argv[1]
sys.stdin.readline()  # wait for the go-ahead, so imports of later writers overlap this one
latest = load_latest_checkpoint(directory)
step = 0 if latest is None else latest[1]["step"]
print(f"resumed {step}", flush=True)
while True:
    step += 1
    state = {"step": step, "weights": torch.full((5_000_000,), float(step)),
             "meta": {"tag": f"step{step}", "sum": 5_000_000 * step}}
    save_checkpoint(directory, f"step{step}", state, keep=2)
    print(f"saved {step}", flush=True)
"""


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"writer printed nothing in {timeout} s")
    return process.stdout.readline().strip()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_sigkilled_writer_never_loses_a_completed_checkpoint(tmp_path: Path) -> None:
    rounds, seed = 4, 20240611
    rng = random.Random(seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(rounds)
    ]
    try:
        latest_step, progress = 0, 0
        for round_index, writer in enumerate(writers):
            writer.stdin.write("go\n")
            writer.stdin.flush()
            line = _read_line(writer, timeout=60)
            assert line == f"resumed {latest_step}", (line, writer.stderr.read())
            # Killed at a random moment after its first save, however slow this machine
            # is: every round has something to lose, and a busy host cannot make the
            # kill land before any save.
            first = _read_line(writer, timeout=120)
            assert first == f"saved {latest_step + 1}", (first, writer.stderr.read())
            delay = rng.uniform(0.1, 0.6)
            time.sleep(delay)
            writer.send_signal(signal.SIGKILL)
            stdout, stderr = writer.communicate(timeout=30)
            assert writer.returncode == -signal.SIGKILL, stderr
            lines = [first, *stdout.split("\n")]
            acked = [int(s.split()[1]) for s in lines if s.startswith("saved ")]
            last_acked = acked[-1]

            context = f"round {round_index}, seed {seed}, delay {delay:.3f}, acked {acked}"
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # atomic writes: nothing to fall back from
                path, state = load_latest_checkpoint(tmp_path)
            # A save that returned is never lost; the one in flight may have completed.
            assert state["step"] in (last_acked, last_acked + 1), context
            step = state["step"]
            assert path.name.endswith(f"-step{step}.pt"), context
            assert state["meta"] == {"tag": f"step{step}", "sum": 5_000_000 * step}, context
            weights = state["weights"]
            assert weights.shape == (5_000_000,) and bool((weights == step).all()), context
            assert 1 <= len(list_checkpoints(tmp_path)) <= 3, context
            for other in list_checkpoints(tmp_path):
                load_checkpoint(other)  # every complete file verifies
            progress += step - latest_step
            latest_step = step
        assert progress >= 1, "no writer completed a single checkpoint"
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.communicate()
