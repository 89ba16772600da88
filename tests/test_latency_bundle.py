"""Latency bundles: a table timed on a device without PyTorch.

The runner (``measure.py``) runs in a virtual environment that holds only numpy and
onnxruntime (``.venv-runner``, made by ``make runner-venv`` or by the fixture below);
these tests assert that torch cannot be imported there. No assertion is on a timing
value: they check what is timed, that nothing is timed twice after an interruption, and
that every bad results file is refused in one line.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
import venv
import zipfile
from pathlib import Path

import pytest

from onceforall.cli import main
from onceforall.latency import bundle_runner as runner
from onceforall.latency.table import LatencyTable
from onceforall.storage.run_layout import RunLayout
from onceforall.training import load_run
from tests.conftest import copy_run, needs_fashion_mnist

pytestmark = needs_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
RUNNER_VENV = ROOT / ".venv-runner"


@pytest.fixture(scope="session")
def runner_python() -> Path:
    """Python of a virtual environment with numpy and onnxruntime and nothing else."""
    python = RUNNER_VENV / "bin" / "python"
    if not python.exists():
        venv.create(RUNNER_VENV, with_pip=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "numpy", "onnxruntime"], check=True)
    probe = "import importlib.util as u; print(u.find_spec('torch') is None)"
    assert subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout == "True\n"
    return python


@pytest.fixture(scope="module")
def bundle_run(trained_run, tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the trained run, its bundle unpacked (two resolutions, 2 rounds, 4
    calibration networks per resolution)."""
    where = tmp_path_factory.mktemp("bundle")
    run = copy_run(trained_run, where)
    out = where / "bundle.zip"
    command = ["latency-bundle", "--run", str(run), "--out", str(out), "--repeats", "2"]
    assert main([*command, "--calibration-archs", "4"]) == 0
    zipfile.ZipFile(out).extractall(where / "unpacked")
    return run, where / "unpacked"


def _default_sigint() -> None:
    """In the child: SIGINT back to its default, which Python turns into
    KeyboardInterrupt (a shell that starts jobs in the background makes them ignore it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _measure(python: Path, folder: Path, out: Path, *extra: str, **kwargs):
    command = [str(python), str(folder / "measure.py"), "--out", str(out), "--threads", "1"]
    return subprocess.Popen(
        [*command, *extra],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
        **kwargs,
    )


def _one_line_error(capsys: pytest.CaptureFixture, *expected: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err


def test_the_bundle_holds_every_part_and_the_runner(bundle_run) -> None:
    run, folder = bundle_run
    manifest = json.loads((folder / "manifest.json").read_text())
    _, net = load_run(run)
    assert manifest["resolutions"] == sorted(net.space.resolutions)
    assert manifest["backend"] == "onnxruntime" and manifest["precision"] == "fp32"
    # Every (resolution, slot, k, e) maps to a timed part, as in the in-process table.
    keys = {m["key"] for m in manifest["models"].values() if m["kind"] == "part"}
    for r in manifest["resolutions"]:
        assert {f"stem@{r}", f"head@{r}"} <= keys
        for per_k in manifest["index"][str(r)]:
            assert {key for per_e in per_k for key in per_e} <= keys
    with zipfile.ZipFile(folder / runner.MODELS) as models:  # read from there, not unpacked
        for model in manifest["models"].values():
            assert hashlib.sha256(models.read(model["file"])).hexdigest() == model["sha256"]
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "measure.py", "models.zip"]
    assert (folder / "measure.py").read_bytes() == Path(runner.__file__).read_bytes()
    # The run keeps the manifest, by its SHA-256.
    kept = list(RunLayout(run).latency_bundles.glob("*.json"))
    assert [p.read_bytes() for p in kept] == [(folder / "manifest.json").read_bytes()]


def test_results_from_a_device_without_torch_make_a_table_that_specialises(
    bundle_run, runner_python, tmp_path, capsys
) -> None:
    run, folder = bundle_run
    run = copy_run(run, tmp_path)
    results = tmp_path / "results.json"
    proc = _measure(runner_python, folder, results, "--device-name", "test-board")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "done: " in err, err
    assert main(["latency-table", "--run", str(run), "--from-bundle", str(results)]) == 0
    assert "by latency bundle" in capsys.readouterr().out
    _, net = load_run(run)
    table = LatencyTable.load(RunLayout(run).latency_table, net)
    assert not table.measurable_here and table.bundle_sha256
    assert table.device_description.startswith("test-board: ")
    assert "onnxruntime" in table.versions
    payload = runner.read_results(str(results))
    manifest = payload["manifest"]
    # Each entry is the median of its model's rounds; every calibration network is kept.
    for name, model in manifest["models"].items():
        if model["kind"] == "part":
            assert len(payload["samples"][name]) == 2
            assert table.entries[model["key"]][0] == pytest.approx(
                sum(payload["samples"][name]) / 2
            )
    assert len(table.calibration) == len(manifest["calibration"])

    # Specialise with it: a predictor fitted on a few measured sub-networks, then a
    # latency target between the smallest and the largest network the table prices.
    few = ["--calibration-images", "32", "--eval-images", "32"]
    assert main(["acc-dataset", "--run", str(run), "--num-archs", "4", *few]) == 0
    assert main(["train-predictor", "--run", str(run), "--val-fraction", "0", "--epochs", "2"]) == 0
    r = max(table.resolutions)
    budget = (table.predict(net.space.smallest(r)) + table.predict(net.space.largest(r))) / 2
    command = ["specialize", "--run", str(run), "--target", f"latency_ms<={budget:.4f}"]
    command += ["--generations", "3", "--population", "8", "--random-baseline", "0"]
    assert main(command) == 0
    chosen = json.loads(RunLayout(run).specialized.read_text())[0]
    assert chosen["predicted_latency_ms"] <= budget
    assert chosen["measured_latency_ms"] is None  # another device: predicted only


def _rounds(path: Path) -> dict[str, list[float]]:
    return runner.read_results(str(path))["samples"]


def _wait_for_rounds(path: Path, proc: subprocess.Popen, more_than: int) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if path.exists():
            samples = _rounds(path)
            if samples and min(len(v) for v in samples.values()) > more_than:
                return samples
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError("the runner timed no round in 300 s")


@pytest.mark.slow  # about 6 s: three runner processes (make test-slow)
def test_an_interrupted_runner_resumes_without_timing_anything_again(
    bundle_run, runner_python, tmp_path
) -> None:
    _, folder = bundle_run
    results = tmp_path / "results.json"
    repeats = ["--repeats", "30"]
    proc = _measure(runner_python, folder, results, *repeats)
    _wait_for_rounds(results, proc, 1)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert "run the same command again to resume" in proc.stderr.read()
    after_sigint = _rounds(results)

    proc = _measure(runner_python, folder, results, *repeats)
    _wait_for_rounds(results, proc, max(len(v) for v in after_sigint.values()) + 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert "resuming" in proc.stderr.read()
    after_sigkill = _rounds(results)  # the last complete round, never a part of one

    proc = _measure(runner_python, folder, results, *repeats)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    final = runner.read_results(str(results))
    assert final["complete"]
    for name, values in final["samples"].items():
        assert len(values) == 30  # no round timed twice
        assert values[: len(after_sigint.get(name, []))] == after_sigint.get(name, [])
        assert values[: len(after_sigkill.get(name, []))] == after_sigkill.get(name, [])
    # Other settings would mix two kinds of timings in one file: refused.
    proc = _measure(runner_python, folder, results, "--repeats", "5")
    assert proc.wait(timeout=60) == 2
    assert "was started with" in proc.stderr.read()


def _resign(payload: dict, path: Path) -> Path:
    runner.write_results(str(path), payload)
    return path


def test_bad_results_are_refused_in_one_line(bundle_run, runner_python, tmp_path, capsys):
    run, folder = bundle_run
    run = copy_run(run, tmp_path)
    good = tmp_path / "good.json"
    proc = _measure(runner_python, folder, good)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    payload = runner.read_results(str(good))
    table_before = RunLayout(run).latency_table.exists()

    def refused(path: Path, *expected: str) -> None:
        assert main(["latency-table", "--run", str(run), "--from-bundle", str(path)]) == 2
        _one_line_error(capsys, *expected)

    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    refused(truncated, "truncated.json", "damaged or truncated")
    edited = tmp_path / "edited.json"
    edited.write_text(good.read_text().replace('"complete": true', '"complete": false'))
    refused(edited, "checksum does not match")
    refused(_resign({**payload, "version": 2}, tmp_path / "v2.json"), "version 2 results file")
    refused(_resign({**payload, "complete": False}, tmp_path / "partial.json"), "incomplete")
    name = next(iter(payload["manifest"]["models"]))
    samples = {k: v for k, v in payload["samples"].items() if k != name}
    file = payload["manifest"]["models"][name]["file"]
    refused(_resign({**payload, "samples": samples}, tmp_path / "missing.json"), file)
    other = {**payload, "bundle_sha256": "0" * 64}
    refused(_resign(other, tmp_path / "other.json"), "a bundle this run did not make")
    refused(tmp_path / "absent.json", "no results file")
    assert RunLayout(run).latency_table.exists() == table_before  # nothing written


def test_the_runner_refuses_a_damaged_bundle(bundle_run, runner_python, tmp_path) -> None:
    _, folder = bundle_run
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for item in folder.iterdir():
        (damaged / item.name).write_bytes(item.read_bytes())
    manifest = json.loads((folder / "manifest.json").read_text())
    name, entry = next(iter(manifest["models"].items()))
    with zipfile.ZipFile(folder / runner.MODELS) as models:
        info = models.getinfo(entry["file"])
    data = bytearray((damaged / runner.MODELS).read_bytes())
    at = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    data[at] ^= 0xFF  # one byte inside the first model's compressed data
    (damaged / runner.MODELS).write_bytes(bytes(data))
    proc = _measure(runner_python, damaged, tmp_path / "r.json")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert err.strip().splitlines()[-1].startswith(f"measure.py: {runner.MODELS} is damaged"), err
    assert not (tmp_path / "r.json").exists()  # refused before anything was written
    (damaged / runner.MODELS).unlink()
    proc = _measure(runner_python, damaged, tmp_path / "r.json")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "lacks models.zip: unpack the whole bundle" in err, err
    help_text = subprocess.run(
        [str(runner_python), str(folder / "measure.py"), "--help"], capture_output=True, text=True
    ).stdout
    assert "Termux" in help_text and "ofa latency-table --run RUN --from-bundle" in help_text
