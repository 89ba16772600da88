"""Kill a writer at many points with SIGKILL and check what it leaves behind (driven by
tests/test_crash_consistency.py, which runs this module as a subprocess).

Each kill point is one forked child that runs the real writer (the export and training
functions that ``ofa export`` and ``ofa train`` call) and is killed with SIGKILL just
before its n-th file-system operation: every open, fsync, truncate, rename, replace,
unlink, mkdir, rmdir and directory exchange the package starts, counted by wrappers
around those functions (the real ones still do the work). The points are drawn at
random (seeded) among the operations an uninterrupted run performs, so they fall
wherever the writer touches the disk, whatever the speed of the machine. The process
sets torch to one thread before any work, so the forked children can use torch safely.

Usage::

    python -m tests.crash_harness export RUN OUT KILLS SEED
    python -m tests.crash_harness train CONFIG.json RUN REFERENCE_RUN KILLS SEED

It prints one JSON line with what it observed and exits 0 when every check held.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sys
import traceback
from pathlib import Path
from typing import Callable

import torch

# The functions through which the package changes files and folders (pathlib's methods
# call these too); a counting wrapper replaces each in the child that is to be killed.
OS_OPERATIONS = ("open", "fsync", "ftruncate", "rename", "replace", "unlink", "mkdir", "rmdir")
_HELPERS = ("pathlib.py", "shutil.py", "contextlib.py", "os.py", "tempfile.py")


def _from_onceforall(frame) -> bool:  # noqa: ANN001
    """Whether the call in ``frame`` is made by the package, directly or through a
    standard-library file helper (``Path.write_bytes`` calls ``open``)."""
    while frame is not None and frame.f_code.co_filename.endswith(_HELPERS):
        frame = frame.f_back
    return frame is not None and "/onceforall/" in frame.f_code.co_filename


_counter = {"count": 0, "kill_at": None}


def instrument_file_system_operations() -> None:
    """Wrap the file-system operations the package starts (opening, syncing, truncating,
    renaming, replacing, deleting, making and removing folders, and the directory
    exchange; not those inside libraries it calls, such as torch.save's writes) so that
    :func:`count_operations` counts them. The real functions still do the work. Done
    once, in the harness process, before it forks."""
    import builtins

    from onceforall.storage import atomic

    def counting(function):  # noqa: ANN001, ANN202
        def operation(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if _from_onceforall(sys._getframe(1)):
                _counter["count"] += 1
                if _counter["count"] == _counter["kill_at"]:
                    os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)

        return operation

    for name in OS_OPERATIONS:
        setattr(os, name, counting(getattr(os, name)))
    io.open = builtins.open = counting(io.open)
    atomic._exchange = counting(atomic._exchange)


def count_operations(kill_at: int | None = None) -> None:
    """Count operations from zero; SIGKILL this process just before the ``kill_at``-th."""
    _counter.update(count=0, kill_at=kill_at)


def in_child(work: Callable[[], None], kill_at: int | None = None) -> tuple[str, int]:
    """Run ``work`` in a forked child, killed before its ``kill_at``-th file-system
    operation; returns ("killed" | "finished", operations counted) (the count only for a
    child that finished)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        code = 0
        try:
            count_operations(kill_at)
            work()
            os.write(write, str(_counter["count"]).encode())
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        reported = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed", 0
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return "finished", int(reported)
    raise AssertionError(f"the writer failed (status {status}); see its traceback above")


# ----------------------------------------------------------------------------- export
def check_export(out: Path, archs: dict[str, dict]) -> str:
    """``out`` loads as one complete export of a known arch, with nothing half-written
    inside; returns which."""
    from onceforall.deploy.export import load_exported

    net = load_exported(out)  # verifies every file against metadata.json
    metadata = json.loads((out / "metadata.json").read_text())
    names = [name for name, arch in archs.items() if arch == net.arch.to_dict()]
    assert len(names) == 1 and metadata["arch"] == archs[names[0]], metadata["arch"]
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".") or "tmp" in p.name]
    assert not hidden, f"temporary files inside the export: {hidden}"
    return names[0]


def crash_export(run: Path, out: Path, kills: int, seed: int) -> dict:
    from onceforall.deploy.run_inputs import evaluator_for_run
    from onceforall.deploy.steps import export_step
    from onceforall.storage.run_layout import RunLayout
    from onceforall.training import load_run

    config, supernet = load_run(run)
    evaluator = evaluator_for_run(config, "fashion-mnist")
    space = supernet.space
    archs = {"small": space.smallest(space.resolutions[0]), "large": space.largest()}
    as_dicts = {name: arch.to_dict() for name, arch in archs.items()}

    def export(name: str) -> Callable[[], None]:
        def work() -> None:
            export_step(
                supernet, archs[name], out, evaluator=evaluator, threads=1, run=RunLayout(run)
            )

        return work

    in_child(export("small"))  # the first complete export
    assert check_export(out, as_dicts) == "small"
    # How many file-system operations replacing a complete export takes.
    _, operations = in_child(export("large"))
    assert check_export(out, as_dicts) == "large"
    rng = random.Random(seed)
    seen = []
    now = "large"
    for _ in range(kills):
        kill_at = rng.randint(1, operations)
        new = "small" if now == "large" else "large"  # always another arch than the old
        outcome, _ = in_child(export(new), kill_at)
        assert outcome == "killed", f"kill point {kill_at} of {operations} was not reached"
        left = check_export(out, as_dicts)
        assert left in (now, new)
        seen.append((kill_at, "new" if left == new else "old"))
        now = left
    in_child(export("small" if now == "large" else "large"))  # clears what the killed left
    check_export(out, as_dicts)
    beside = sorted(p.name for p in out.parent.iterdir() if out.name in p.name)
    assert beside == sorted([out.name, f".{out.name}.lock"]), beside
    return {"operations": operations, "kills": seen}


# ----------------------------------------------------------------------------- train
def check_run(run: Path, config: dict) -> int:
    """Every checkpoint under its final name verifies and the config is whole; returns
    the step of the newest checkpoint (0 without one)."""
    import yaml

    from onceforall.storage.checkpoint import list_checkpoints, load_checkpoint

    step = 0
    for folder in ("checkpoints", "supernet", "teacher"):
        for path in list_checkpoints(run / folder):
            state = load_checkpoint(path)  # raises on a partial or damaged file
            if folder == "checkpoints":
                step = max(step, state["position"]["global_step"])
    if (run / "config.yaml").exists():
        written = yaml.safe_load((run / "config.yaml").read_text())
        assert written["batch_size"] == config["batch_size"], written
    return step


def crash_train(config_path: Path, run: Path, reference: Path, kills: int, seed: int) -> dict:
    from onceforall.storage.checkpoint import list_checkpoints, load_latest_checkpoint
    from onceforall.training import TrainConfig, train

    raw = json.loads(config_path.read_text())
    config = TrainConfig.from_dict(raw)

    def training(out: Path) -> Callable[[], None]:
        def work() -> None:
            resume = bool(list_checkpoints(out / "checkpoints"))
            train(config, "fashion-mnist", out, resume=resume, progress=False)

        return work

    # The uninterrupted run, in this process: it counts the operations, and the modules
    # it imports are then already loaded in the children (imports open files too).
    count_operations()
    training(reference)()
    operations = _counter["count"]
    # Each resumed child first reads the run and redoes the steps since the last
    # checkpoint, so its kill point is drawn from up to four times the average share of
    # the uninterrupted run's operations: on average the run moves on between kills.
    rng = random.Random(seed)
    gaps = [rng.randint(1, max(1, 4 * operations // kills)) for _ in range(kills)]
    seen = []
    for kill_at in gaps:
        outcome, _ = in_child(training(run), kill_at)
        seen.append((kill_at, outcome, check_run(run, raw)))
        if outcome == "finished":
            break
    in_child(training(run))  # resumes from the last complete checkpoint to the end
    check_run(run, raw)
    expected = load_latest_checkpoint(reference / "supernet")[1]["model"]
    got = load_latest_checkpoint(run / "supernet")[1]["model"]
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"the resumed run ends with other weights: {different[:5]}"
    resumes = [
        json.loads(line)
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if '"resume"' in line
    ]
    return {"operations": operations, "kills": seen, "resumes": len(resumes)}


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)  # before any work: forked children then run torch safely
    instrument_file_system_operations()
    if argv[0] == "export":
        run, out, kills, seed = Path(argv[1]), Path(argv[2]), int(argv[3]), int(argv[4])
        report = crash_export(run, out, kills, seed)
    else:
        config, run, reference = Path(argv[1]), Path(argv[2]), Path(argv[3])
        report = crash_train(config, run, reference, int(argv[4]), int(argv[5]))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
