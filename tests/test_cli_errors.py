"""Every ``ofa`` command refuses bad input the same way (issue 13): exit status 2, one
line on stderr that names the bad file, option or value, never a traceback. Each
command of ``ofa --help`` is run in-process with bad inputs from the table below; an
error argparse reports (a number out of range, an unknown option) is its usage block
ending in one ``error:`` line. ``--debug`` (or OFA_DEBUG=1) shows the traceback instead.

A row fails before any heavy work (no training, no timing, no progress bar): the table
runs in a few seconds, on a copy of the session's tiny trained run with a predictor."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import onceforall
from onceforall.cli import build_parser, main
from onceforall.errors import InputNotFoundError
from tests.conftest import copy_run, needs_fashion_mnist

MBV3 = "ofa_mbv3_d234_e346_k357_w1.0"  # an authors' supernet name (import-reference)
BAD_TARGET = "specialize.targets=['bogus']"
QUICK = "--config fashion-mnist-quick --out @tmp/o"

# (argv, what the one line must say). Tokens: @prun a copy of the trained run with an
# accuracy predictor; @files the folder of bad files (see `files`); @tmp this test's
# empty folder; @arch a valid arch of the run, @arch224 one of ofa_mbv3_w1.0.
CASES: list[tuple[str, ...]] = [
    # list takes no input: a bad option
    ("list --bogus", "unrecognized arguments: --bogus"),
    # profile
    ("profile --num-classes 0 --no-latency", "argument --num-classes: must be a whole number >= 1"),
    ("profile --num-classes -3 --no-latency", "argument --num-classes: must be a whole number"),
    ("profile --repeats 0", "argument --repeats: must be a whole number >= 1, not '0'"),
    ("profile --threads 0", "argument --threads: must be a whole number >= 1, not '0'"),
    ("profile --batch-size 0", "argument --batch-size: must be a whole number >= 1"),
    ("profile --num-random -1 --no-latency", "argument --num-random: must be a whole number >= 0"),
    ("profile --supernet nope", "argument --supernet: invalid choice: 'nope'"),
    ("profile --no-latency --json @files/afile/x.json", "cannot write @files/afile/x.json"),
    # inspect
    ("inspect --num-classes 0 @arch224", "argument --num-classes: must be a whole number >= 1"),
    ("inspect @files/binary", "@files/binary is not a text file (arch file)"),
    ("inspect @files/deep.json", "@files/deep.json is not JSON (an arch file): nested too deeply"),
    ("inspect ''", "'' is neither a file nor arch JSON text"),
    ("inspect nothing.json", "'nothing.json' is neither a file nor arch JSON text"),
    ("inspect '{" + " " * 300 + "}'", "arch is missing key(s) 'ks', 'e', 'd', 'r'"),  # no file
    # latency-table
    ("latency-table --out @tmp/t.json --num-classes 0", "argument --num-classes: must be a whole"),
    ("latency-table --out @tmp/t.json --repeats 0", "argument --repeats: must be a whole number"),
    ("latency-table --out @tmp/t.json --threads 0", "argument --threads: must be a whole number"),
    ("latency-table --out @tmp/t.json --batch-size 0", "argument --batch-size: must be a whole"),
    ("latency-table --out @tmp/t.json --resolutions 0", "argument --resolutions: must be a whole"),
    ("latency-table --out @tmp/t.json --supernet nope", "unknown supernet 'nope'; known:"),
    ("latency-table --run @tmp/nowhere", "@tmp/nowhere/config.yaml not found"),
    ("latency-table --out @files/afile/t.json", "cannot write @files/afile/t.json: @files/afile"),
    (
        "latency-table --run @prun --extend --out @files/truncated.json",
        "@files/truncated.json is not a latency table: not JSON",
    ),
    ("latency-table --run @prun --extend --out @files/binary", "@files/binary is not a text file"),
    ("latency-table --run @prun --format authors --out @files/afile", "@files/afile is a file"),
    ("latency-table --from-bundle @files/binary", "--from-bundle needs --run"),
    ("latency-table --run @prun --from-bundle @files/binary --extend", "--extend does not apply"),
    ("latency-table --run @prun --from-bundle @tmp/no.json", "no results file at @tmp/no.json"),
    (
        "latency-table --run @prun --from-bundle @files/truncated.json",
        "@files/truncated.json is damaged or truncated: not JSON",
    ),
    # latency-bundle
    ("latency-bundle --run @prun", "the following arguments are required: --out"),
    ("latency-bundle --run @prun --out @tmp/b.zip --repeats 0", "argument --repeats: must be a"),
    ("latency-bundle --run @prun --out @tmp/b.zip --backend tvm", "argument --backend: invalid"),
    ("latency-bundle --run @tmp/nowhere --out @tmp/b.zip", "@tmp/nowhere/config.yaml not found"),
    ("latency-bundle --run @prun --out @files/afile/b.zip", "cannot write @files/afile/b.zip"),
    # train
    ("train --config @files/list.yaml --out @tmp/o", "@files/list.yaml holds a list, not a config"),
    ("train --config @files/bad.yaml --out @tmp/o", "@files/bad.yaml is not valid YAML"),
    ("train --config @files/binary --out @tmp/o", "@files/binary is not a text file (config file)"),
    ("train --config @files/stages5.yaml --out @tmp/o", "stages must be a list of stages, not 5"),
    ("train --config @files/no_lr.yaml --out @tmp/o", "stages[0] lacks epochs, lr"),
    ("train --config nopreset --out @tmp/o", "no config file 'nopreset' and no preset of that"),
    (f"train {QUICK} --set batch_size=sixteen", "batch_size must"),
    (
        f"train {QUICK} --set nokey=1",
        "unknown config key(s): nokey",
    ),
    (f"train {QUICK} --set batch_size", "--set expects KEY=VALUE"),
    (
        f"train {QUICK} --set =3",
        "--set expects KEY=VALUE, got '=3'",
    ),
    (
        f"train {QUICK} --set batch_size=[1",
        "--set 'batch_size=[1': the value is not YAML",
    ),
    (f"train {QUICK} --set stages=3", "stages must be a list"),
    (
        f"train {QUICK} --set stages.nostage.lr=1",
        "no stage 'nostage'; stages: full, kernel",
    ),
    (
        f"train {QUICK} --data @tmp/nowhere --set {BAD_TARGET}",
        "specialize.targets: cannot parse constraint 'bogus'",
    ),
    (
        f"train {QUICK} --data @tmp/nowhere",
        "@tmp/nowhere is not a folder nor a known dataset name; accepted: Fashion-MNIST",
    ),
    (f"train {QUICK} --max-steps 0", "argument --max-steps"),
    (f"train {QUICK} --device nodevice", "unknown device"),
    ("train --config fashion-mnist-quick --out @files/afile", "@files/afile is a file, not a run"),
    (f"train {QUICK} --fresh --resume", "choose one"),
    # acc-dataset
    ("acc-dataset --run @prun --num-archs 0", "argument --num-archs: must be a whole number >= 1"),
    ("acc-dataset --run @prun --eval-images 0", "argument --eval-images: must be a whole number"),
    ("acc-dataset --run @prun --device nodevice", "argument --device: unknown device 'nodevice'"),
    (
        "acc-dataset --run @prun --num-archs 1 --calibration-images 100000",
        "calibration_images (100000) must be fewer than the run's 160 held-out images",
    ),
    ("acc-dataset --run @prun --num-archs 1 --out @files/binary", "@files/binary is not a text"),
    ("acc-dataset --run @tmp/nowhere", "@tmp/nowhere/config.yaml not found"),
    # train-predictor
    ("train-predictor --run @prun --epochs 0", "argument --epochs: must be a whole number >= 1"),
    ("train-predictor --run @prun --val-fraction 1.5", "argument --val-fraction: must be a number"),
    ("train-predictor --run @prun --dataset @files/binary", "@files/binary is not a text file"),
    ("train-predictor --run @prun --dataset @files/rows.jsonl", "line 1: not a JSON object"),
    ("train-predictor --run @tmp/nowhere", "@tmp/nowhere/config.yaml not found"),
    ("train-predictor --run @prun --out @files/afile/p.pt", "cannot write @files/afile/p.pt"),
    # predict
    ("predict --run @prun --arch @files/binary", "@files/binary is not a text file (arch file)"),
    (
        "predict --run @prun --arch @files/deep.json",
        "is not JSON (an arch file): nested too deeply",
    ),
    ("predict --run @prun --arch nothing", "'nothing' is neither a file nor arch JSON text"),
    ("predict --run @prun --arch {}", "invalid architecture: arch is missing key(s)"),
    (
        "predict --run @prun --arch @arch --latency-table @files/truncated.json",
        "@files/truncated.json is not a latency table: not JSON",
    ),
    ("predict --run @prun --arch @arch --predictor @files/nothing.pt", "no accuracy predictor at"),
    # export-predictor
    ("export-predictor --out @tmp/p.pth", "export-predictor needs the predictor: give --run"),
    (
        "export-predictor --predictor @files/binary --out @tmp/p.pth",
        "@files/binary cannot be read as a weights-only PyTorch file (accuracy predictor)",
    ),
    # search
    ("search --run @prun --target ''", "target '' names no constraint: expected METRIC<=VALUE"),
    ("search --run @prun --target ,", "target ',' names no constraint"),
    ("search --run @prun --target macs<20M", "cannot parse constraint 'macs<20M'"),
    ("search --run @prun --target macs<=20X", "constraint 'macs<=20X': unknown suffix 'X'"),
    ("search --run @prun --target flops<=20M", "unknown metric 'flops'; accepted metrics:"),
    ("search --run @prun --target macs<=1G --target bogus", "cannot parse constraint 'bogus'"),
    ("search --run @prun --target macs<=1 --generations 1", "macs<=1 cannot be met"),
    ("search --run @prun --target macs<=1G --population 0", "argument --population: must be"),
    (
        "search --run @prun --target macs<=1G --population 1",
        "population must be a whole number >= 2",
    ),
    ("search --run @prun --target macs<=1G --generations -1", "argument --generations: must be"),
    ("search --run @prun --target macs<=1G --seed -1", "argument --seed: must be a whole number"),
    (
        "search --run @prun --target latency_ms<=5 --latency-table @files/garbage.json",
        "@files/garbage.json is not a latency table: not JSON",
    ),
    (
        "search --run @prun --target latency_ms<=5 --latency-table @files/deep.json",
        "@files/deep.json is not a latency table: not JSON (nested too deeply",
    ),
    ("search --run @prun --target latency_ms<=5 --latency-table @tmp", "holds no lookup table"),
    (
        "search --run @prun --target macs<=1G --predictor @files/binary",
        "@files/binary cannot be read as a weights-only PyTorch file",
    ),
    ("search --run @tmp/nowhere --target macs<=1G", "@tmp/nowhere/config.yaml not found"),
    (
        "search --run @prun --target latency_ms<=5 --backend onnxruntime-int8",
        "the run has no onnxruntime-int8 latency table (looked for "
        "@prun/latency_tables/onnxruntime-int8.json); time one: ofa latency-table --run "
        "@prun --backend onnxruntime-int8",
    ),
    (
        "search --run @prun --target latency_ms<=5 --backend onnxruntime "
        "--latency-table @files/nothing.json",
        "--backend picks one of the run's own latency tables; --latency-table names",
    ),
    ("search --run @prun --target macs<=1G --backend tflite", "argument --backend: invalid"),
    ("search --run @prun --target macs<=1G --out @files/afile/s.json", "cannot write @files/afile"),
    ("search --run @prun", "the following arguments are required: --target"),
    # specialize
    ("specialize --run @prun --target ''", "target '' names no constraint"),
    ("specialize --run @prun --target bogus", "cannot parse constraint 'bogus'"),
    (
        "specialize --run @prun --target macs<=1G --random-baseline -1 --data @tmp/nowhere",
        "argument --random-baseline: must be a whole number >= 0, not '-1'",
    ),
    ("specialize --run @prun --target macs<=1G --population 0", "argument --population"),
    (
        "specialize --run @prun --target macs<=1G --data @tmp/nowhere",
        "@tmp/nowhere is not a folder nor a known dataset name; accepted:",
    ),
    ("specialize --run @tmp/nowhere --target macs<=1G", "@tmp/nowhere/config.yaml not found"),
    # export
    # finetune
    ("finetune --run @prun --out @tmp/f", "give --arch (a sub-network of the run) or --from"),
    ("finetune --run @prun --arch @arch --out @tmp/f --epochs 0", "epochs must be a positive"),
    ("finetune --run @prun --arch @arch --out @tmp/f --lr nan", "lr must be a positive number"),
    (
        "finetune --run @prun --arch @arch --out @tmp/f --warmup-epochs 3",
        "warmup_epochs must be at least 0 and less than epochs (3.0), not 3.0",
    ),
    ("finetune --run @prun --arch @arch --out @files/afile", "@files/afile is a file"),
    ("finetune --run @prun --from @tmp/nowhere --out @tmp/f", "@tmp/nowhere is not a directory"),
    ("finetune --run @prun --from @files --out @tmp/f", "@files is not a complete export"),
    ("finetune --run @tmp/nowhere --arch @arch --out @tmp/f", "@tmp/nowhere/config.yaml not found"),
    ("finetune --run @prun --arch '{\"ks\": [9]}' --out @tmp/f", "ks"),
    ("export --run @prun --arch @files/binary --out @tmp/e", "@files/binary is not a text file"),
    ("export --run @prun --arch @files/deep.json --out @tmp/e", "nested too deeply"),
    ("export --run @prun --arch '' --out @tmp/e", "'' is neither a file nor arch JSON text"),
    ("export --run @prun --arch @arch --out @tmp/e --threads 0", "argument --threads: must be"),
    ("export --run @prun --arch @arch --out @files/afile", "@files/afile is a file"),
    ("export --run @tmp/nowhere --arch @arch --out @tmp/e", "@tmp/nowhere/config.yaml not found"),
    # import-reference
    (
        f"import-reference @files/binary --name {MBV3} --out @tmp/i",
        "@files/binary cannot be read as a weights-only PyTorch file (reference checkpoint)",
    ),
    (f"import-reference @files/nothing.pth --name {MBV3} --out @tmp/i", "no reference checkpoint"),
    (
        "import-reference @files/binary --name bogus --out @tmp/i",
        "no reference mapping for 'bogus'",
    ),
    # import-subnet
    (
        "import-subnet @files/binary @files/binary --resolution 224 --out @tmp/s",
        "@files/binary is not a text file (net.config)",
    ),
    (
        "import-subnet @files/deep.json @files/binary --resolution 224 --out @tmp/s",
        "@files/deep.json is not JSON: nested too deeply",
    ),
    (
        "import-subnet @files/list.json @files/binary --resolution 224 --out @tmp/s",
        "@files/list.json holds a JSON list, not a net.config",
    ),
    (
        "import-subnet @files/list.json @files/binary --resolution 8 --out @tmp/s",
        "argument --resolution: must be a whole number >= 16, not '8'",
    ),
    # run
    ("run --config @files/list.yaml --out @tmp/r", "@files/list.yaml holds a list, not a config"),
    (f"run {QUICK} --set x", "--set expects KEY=VALUE, got 'x'"),
    (
        f"run {QUICK} --set specialize.finetune_epochs=-1",
        "specialize.finetune_epochs must be a number >= 0, not -1",
    ),
    (
        f"run {QUICK} --set specialize.finetune_epochs=1 --set specialize.finetune_lr=0",
        "specialize.finetune_lr must be above 0 to fine-tune",
    ),
    (
        f"run {QUICK} --data @tmp/nowhere --set {BAD_TARGET}",
        "specialize.targets: cannot parse constraint 'bogus'",
    ),
    (
        f"run {QUICK} --data @tmp/nowhere --predictor @files/binary",
        "@files/binary cannot be read as a weights-only PyTorch file (accuracy predictor)",
    ),
    (
        f"run {QUICK} --data @tmp/nowhere --latency-table @files/truncated.json",
        "@files/truncated.json is not a latency table: not JSON",
    ),
    (
        f"run {QUICK} --data @tmp/nowhere --latency-table @files/nothing.json",
        "no latency table at @files/nothing.json",
    ),
    (f"run {QUICK} --device nodevice", "unknown device"),
    ("run --config fashion-mnist-quick --out @files/afile", "@files/afile is a file"),
]


@pytest.fixture(scope="module")
def prun(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's trained run with an accuracy dataset and a predictor."""
    run = copy_run(trained_run, tmp_path_factory.mktemp("cli-errors"))
    args = ["--run", str(run), "--num-archs", "8", "--calibration-images", "32"]
    assert main(["acc-dataset", *args, "--eval-images", "32"]) == 0
    assert main(["train-predictor", "--run", str(run), "--epochs", "5"]) == 0
    return run


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bad inputs: a binary file, JSON nested 100k deep, a truncated or garbage JSON, YAML
    that is not a config, a file where a folder is expected."""
    folder = tmp_path_factory.mktemp("bad-files")
    contents: dict[str, str | bytes] = {
        "binary": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,  # a JPEG's start: not UTF-8
        "deep.json": "[" * 100_000,
        "truncated.json": '{"format": "onceforall-latency-table", "version": 2, "entries": {',
        "garbage.json": "garbage!!{",
        "list.json": "[1, 2]",
        "list.yaml": "- 1\n- 2\n",
        "bad.yaml": "{{{",
        "stages5.yaml": "stages: 5\n",
        "no_lr.yaml": "stages:\n  - name: full\n",
        "rows.jsonl": "5\n6\n",
        "afile": "a file, not a folder\n",
    }
    for name, content in contents.items():
        path = folder / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return folder


def _fill(text: str, tokens: dict[str, str]) -> str:
    for token, value in tokens.items():
        text = text.replace(token, value)
    return text


def run_ofa(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and stderr of ``ofa ARGV`` run in this process (argparse's errors
    exit through SystemExit; anything else propagates, failing the test)."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _arch(supernet: str, **overrides: object) -> str:
    return onceforall.create_supernet(supernet, **overrides).space.smallest().to_json()


@needs_fashion_mnist
@pytest.mark.parametrize(("line", "expected"), CASES, ids=[c[0][:60] for c in CASES])
def test_bad_input_is_one_line_with_status_2(
    line: str, expected: str, prun: Path, files: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.delenv("OFA_DEBUG", raising=False)
    tokens = {"@prun": str(prun), "@files": str(files), "@tmp": str(tmp_path)}
    if "@arch224" in line:
        tokens["@arch224"] = _arch("ofa_mbv3_w1.0")
    if "@arch" in line:
        tokens["@arch"] = _arch("ofa_mbv3_w1.0", resolutions=[24, 28], num_classes=10)
    code, err = run_ofa([_fill(word, tokens) for word in shlex.split(line)], capsys)
    assert "Traceback" not in err
    assert code == 2, err
    lines = err.splitlines()
    if lines and lines[0].startswith("usage: ofa"):  # argparse: its usage, then one error line
        message = lines[-1]
        assert message.startswith("ofa") and ": error: " in message, err
        assert sum(": error: " in text for text in lines) == 1, err
    else:
        assert len(lines) == 1 and lines[0].startswith("ofa: "), err
        message = lines[0]
    assert _fill(expected, tokens) in message, err


def test_the_table_covers_every_command() -> None:
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    covered = {line.split()[0] for line, _ in CASES}
    assert covered == set(commands.choices)


def test_a_missing_run_is_not_made_by_acc_dataset(tmp_path: Path, capsys) -> None:
    code, err = run_ofa(["acc-dataset", "--run", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "config.yaml not found" in err
    assert not (tmp_path / "nowhere").exists()


def test_debug_raises_instead(monkeypatch, tmp_path: Path) -> None:
    """``ofa --debug`` (or OFA_DEBUG=1) lets the error propagate, traceback and all."""
    missing = str(tmp_path / "nothing.json")
    monkeypatch.delenv("OFA_DEBUG", raising=False)
    with pytest.raises(InputNotFoundError, match="neither a file nor arch JSON"):
        main(["--debug", "inspect", missing])
    monkeypatch.setenv("OFA_DEBUG", "1")
    with pytest.raises(InputNotFoundError, match="neither a file nor arch JSON"):
        main(["inspect", missing])
    monkeypatch.setenv("OFA_DEBUG", "0")
    assert main(["inspect", missing]) == 2


def test_help_documents_debug(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--debug" in out and "OFA_DEBUG=1" in out


def test_interrupt_is_one_line_with_status_130(monkeypatch, capsys) -> None:
    import onceforall.cli as cli

    monkeypatch.delenv("OFA_DEBUG", raising=False)

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_list", interrupted)
    try:
        code, err = run_ofa(["list"], capsys)
    except KeyboardInterrupt:  # not into pytest, which would stop the session
        pytest.fail("KeyboardInterrupt escaped ofa")
    assert (code, err) == (130, "ofa: interrupted\n")


def test_the_ofa_command_exits_2_in_one_line_and_debug_shows_the_traceback(tmp_path) -> None:
    """The real command (its own process): one line and status 2; with --debug the
    traceback and Python's status 1."""
    ofa = Path(sys.executable).with_name("ofa")  # the installed command, where there is one
    command = [str(ofa)] if ofa.is_file() else [sys.executable, "-m", "onceforall.cli"]
    command += ["inspect", str(tmp_path / "nothing")]
    env = {k: v for k, v in os.environ.items() if k != "OFA_DEBUG"} | {"OMP_NUM_THREADS": "1"}
    plain = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 2
    assert plain.stderr.splitlines() == [
        f"ofa: {str(tmp_path / 'nothing')!r} is neither a file nor arch JSON text"
    ]
    debug = command[:-2] + ["--debug"] + command[-2:]
    shown = subprocess.run(debug, capture_output=True, text=True, env=env, timeout=120)
    assert shown.returncode == 1
    assert shown.stderr.startswith("Traceback") and "InputNotFoundError" in shown.stderr


def test_latency_table_of_fewer_resolutions_than_the_run(
    prun: Path, tmp_path: Path, capsys
) -> None:
    """--resolutions a subset of the run's: the summary line predicts at the sizes the
    table covers (it failed after writing the table, asking for the run's largest)."""
    out = tmp_path / "t.json"
    args = ["latency-table", "--run", str(prun), "--resolutions", "24", "--repeats", "1"]
    code, err = run_ofa([*args, "--out", str(out)], capsys)
    assert code == 0, err
    assert out.is_file()
