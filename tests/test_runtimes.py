"""Runtimes as backends (issue 15): ONNX Runtime INT8 with its own latency table beside
the run's, search and specialisation on it, and the INT8 model of an export, calibrated
on held-out training images only and checked against PyTorch before it is kept; OpenVINO
timing networks and holding an export's model.xml. Real quantization and conversion by
the runtimes, of networks trained for a few steps on Fashion-MNIST."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from onceforall.cli import main
from onceforall.deploy.export import load_exported
from onceforall.deploy.quantized import Int8Images, int8_top1, write_int8
from onceforall.deploy.run_inputs import evaluator_for_run
from onceforall.latency import LatencyTable
from onceforall.storage.onnx_export import export_and_check_onnx
from onceforall.storage.run_layout import RunLayout
from onceforall.training import load_run
from tests.conftest import copy_run, needs_fashion_mnist

pytest.importorskip("onnxruntime.quantization")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


pytestmark = needs_fashion_mnist

ARCH = {
    "ks": [3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5, 7, 3, 5],
    "e": [3, 4, 6, 3, 4, 6, 3, 4, 6, 3, 4, 6, 3, 4, 6, 3, 4, 6, 3, 4],
    "d": [2, 3, 4, 2, 3],
    "r": [24],
}


@pytest.fixture(scope="module")
def run(trained_run, tmp_path_factory) -> Path:
    return copy_run(trained_run, tmp_path_factory.mktemp("int8"))


def _logits(predict, model, config, record) -> tuple[np.ndarray, np.ndarray]:
    """An INT8 file's logits and the exported network's on the held-out images its
    agreement was checked on (those after the calibration images)."""
    evaluator = evaluator_for_run(config, "fashion-mnist")
    images = torch.cat([b[0] for b in evaluator.batches("calibration", 24)])
    images = images[record["calibration_images"] :]
    assert len(images) == record["agreement_images"]
    with torch.no_grad():
        want = model(images).numpy()
    return np.asarray(predict(images.numpy())), want


def test_an_export_holds_the_int8_model_checked_and_measured(run, tmp_path, capsys) -> None:
    out = tmp_path / "export"
    command = ["export", "--run", str(run), "--arch", json.dumps(ARCH), "--out", str(out)]
    both = ["--backend", "onnxruntime", "--backend", "onnxruntime-int8"]
    # A network trained for ten steps has near ties that INT8 flips: a lower bar here.
    assert main([*command, *both, "--int8-min-agreement", "0.6"]) == 0
    printed = capsys.readouterr().out
    assert "model.int8.onnx: onnxruntime int8" in printed and "agrees with FP32 on" in printed
    metadata = json.loads((out / "metadata.json").read_text())
    assert {"model.onnx", "model.int8.onnx"} <= set(metadata["files"])
    fp32, int8 = metadata["runtimes"]["model.onnx"], metadata["runtimes"]["model.int8.onnx"]
    assert (fp32["precision"], int8["precision"]) == ("fp32", "int8")
    assert fp32["versions"]["onnxruntime"] == int8["versions"]["onnxruntime"]
    assert fp32["latency_ms"] > 0 and int8["latency_ms"] > 0
    # FP32 ONNX Runtime computes what PyTorch computes: the same test top-1.
    assert fp32["top1"] == pytest.approx(metadata["top1"], abs=1e-9)
    assert 0 <= int8["top1"] <= 100 and int8["agreement_top1"] >= 0.6
    config, _ = load_run(run)
    held_out = min(config.bn_recal_images, config.holdout_size)
    assert int8["calibration_images"] + int8["agreement_images"] == held_out
    load_exported(out)  # every file, the INT8 model included, checked against its hash

    # The file is the one checked: run alone, it agrees with PyTorch as recorded.
    import onnxruntime as ort

    model = load_exported(out).eval()
    session = ort.InferenceSession(str(out / "model.int8.onnx"))
    got, want = _logits(lambda x: session.run(None, {"input": x})[0], model, config, int8)
    assert (got.argmax(1) == want.argmax(1)).mean() == pytest.approx(int8["agreement_top1"])


def test_an_export_holds_openvinos_model_checked_and_measured(run, tmp_path) -> None:
    pytest.importorskip("openvino")
    out = tmp_path / "export"
    command = ["export", "--run", str(run), "--arch", json.dumps(ARCH), "--out", str(out)]
    assert main([*command, "--backend", "openvino"]) == 0
    metadata = json.loads((out / "metadata.json").read_text())
    assert {"model.onnx", "model.xml", "model.bin"} <= set(metadata["files"])
    record = metadata["runtimes"]["model.xml"]
    assert (record["runtime"], record["precision"]) == ("openvino", "fp32")
    assert "openvino" in record["versions"] and record["latency_ms"] > 0
    assert record["top1"] == pytest.approx(metadata["top1"], abs=1e-9)  # FP32: the network
    assert record["max_abs_error"] < 1e-3
    # The IR runs in OpenVINO alone and computes what the exported network computes, at
    # the precision the metadata names (OpenVINO's own default is bf16 where the CPU has
    # it, which is not FP32).
    import openvino as ov

    assert record["config"]["INFERENCE_PRECISION_HINT"] == "f32"
    model = load_exported(out).eval()
    x = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    compiled = ov.Core().compile_model(str(out / "model.xml"), "CPU", record["config"])
    got = compiled({0: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


@pytest.mark.slow  # in CI: make test-slow (docs/benchmarks.md, "The test suite")
def test_an_export_holds_openvinos_int8_model_checked_and_measured(run, tmp_path) -> None:
    pytest.importorskip("nncf")
    out = tmp_path / "export"
    command = ["export", "--run", str(run), "--arch", json.dumps(ARCH), "--out", str(out)]
    both = ["--backend", "openvino-int8", "--backend", "onnxruntime-int8"]
    # Ten steps of training leave near ties: on these 32 images the two quantizers agree
    # with FP32 on 56-75 %; a trained network's agreement is measured in bench/runtimes.py.
    assert main([*command, *both, "--int8-min-agreement", "0.4"]) == 0
    metadata = json.loads((out / "metadata.json").read_text())
    assert {"model.int8.xml", "model.int8.bin", "model.int8.onnx"} <= set(metadata["files"])
    record = metadata["runtimes"]["model.int8.xml"]
    assert (record["backend"], record["runtime"], record["precision"]) == (
        "openvino-int8",
        "openvino",
        "int8",
    )
    assert "nncf" in record["versions"] and record["latency_ms"] > 0
    assert record["agreement_top1"] >= 0.4 and 0 <= record["top1"] <= 100
    assert record["quantization"]["method"].startswith("nncf")
    # The IR runs in OpenVINO alone; its INT8 logits track the exported network's.
    import openvino as ov

    model = load_exported(out).eval()
    config, _ = load_run(run)
    compiled = ov.Core().compile_model(str(out / "model.int8.xml"), "CPU", {})
    got, want = _logits(lambda x: compiled({0: x})[0], model, config, record)
    assert (got.argmax(1) == want.argmax(1)).mean() == pytest.approx(record["agreement_top1"])


@pytest.mark.slow  # two conversions by litert-torch: 20-40 s each
@pytest.mark.skipif(not _has("litert_torch"), reason="no litert-torch")
def test_an_export_holds_litert_models_checked_and_measured(run, tmp_path) -> None:
    out = tmp_path / "export"
    command = ["export", "--run", str(run), "--arch", json.dumps(ARCH), "--out", str(out)]
    both = ["--backend", "litert", "--backend", "litert-int8", "--int8-min-agreement", "0.4"]
    assert main([*command, *both]) == 0
    metadata = json.loads((out / "metadata.json").read_text())
    assert {"model.onnx", "model.tflite", "model.int8.tflite"} <= set(metadata["files"])
    record = metadata["runtimes"]["model.tflite"]
    assert (record["backend"], record["runtime"], record["precision"]) == (
        "litert",
        "litert",
        "fp32",
    )
    assert "litert-torch" in record["versions"] and record["latency_ms"] > 0
    assert record["max_abs_error"] < 1e-3
    assert record["top1"] == pytest.approx(metadata["top1"], abs=1e-9)  # FP32: the network
    # The file runs in LiteRT's interpreter alone (NCHW input, batch 1) and computes
    # what the exported network computes.
    from ai_edge_litert.interpreter import Interpreter

    model = load_exported(out).eval()
    runs = Interpreter(model_path=str(out / "model.tflite"))
    runs.allocate_tensors()
    (source,), (target,) = runs.get_input_details(), runs.get_output_details()
    assert tuple(source["shape"]) == (1, 3, 24, 24)
    x = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    runs.set_tensor(source["index"], x.numpy())
    runs.invoke()
    got = runs.get_tensor(target["index"])
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())

    # The INT8 file: INT8 in and out, its own scales; run alone, with the images
    # quantized by hand, it agrees with the network as often as the export recorded.
    record = metadata["runtimes"]["model.int8.tflite"]
    assert (record["backend"], record["precision"]) == ("litert-int8", "int8")
    assert "torchao" in record["versions"] and record["latency_ms"] > 0
    assert record["quantization"]["input_output"].startswith("int8")
    runs = Interpreter(model_path=str(out / "model.int8.tflite"))
    runs.allocate_tensors()
    (source,), (target,) = runs.get_input_details(), runs.get_output_details()
    assert source["dtype"] == np.int8 and target["dtype"] == np.int8

    def predict(images: np.ndarray) -> np.ndarray:
        (scale, zero), (out_scale, out_zero) = source["quantization"], target["quantization"]
        logits = []
        for image in images:
            q = np.clip(np.round(image / scale) + zero, -128, 127).astype(np.int8)
            runs.set_tensor(source["index"], q[None])
            runs.invoke()
            logits.append(runs.get_tensor(target["index"]).astype(np.float32) - out_zero)
        return np.concatenate(logits) * out_scale

    config, _ = load_run(run)
    got, want = _logits(predict, model, config, record)
    assert (got.argmax(1) == want.argmax(1)).mean() == pytest.approx(record["agreement_top1"])


@pytest.mark.slow  # in CI: make test-slow (docs/benchmarks.md, "The test suite")
def test_networks_time_on_every_installed_backend(run) -> None:
    """The same network on each runtime: one timing each, through one interface."""
    from onceforall.latency.backends import BACKENDS
    from onceforall.latency.measure import backend_versions, measure_latency
    from onceforall.storage.onnx_export import MissingDependencyError

    _, supernet = load_run(run)
    net = supernet.extract(supernet.parse_arch(ARCH))
    for backend in BACKENDS:
        try:
            backend_versions(backend)
        except MissingDependencyError:
            continue  # an optional runtime not installed here: its own tests skip too
        stats = measure_latency(net, 24, backend=backend, threads=1, repeats=2, warmup=1)
        assert stats.backend == backend and stats.median_ms > 0 and stats.threads == 1


INT8_BACKENDS = [
    "onnxruntime-int8",
    pytest.param("openvino-int8", marks=pytest.mark.skipif(not _has("nncf"), reason="no nncf")),
    pytest.param(  # three conversions by litert-torch: 20-40 s each
        "litert-int8",
        marks=[pytest.mark.slow, pytest.mark.skipif(not _has("torchao"), reason="no torchao")],
    ),
]


def _bytes(paths: list[Path]) -> list[bytes]:
    """The bytes of an INT8 model's files that hold its weights and ranges (OpenVINO's
    XML names its nodes from a counter that runs through the process: left out)."""
    return [path.read_bytes() for path in paths if path.suffix != ".xml"]


@pytest.mark.parametrize("backend", INT8_BACKENDS)
def test_int8_calibration_reads_held_out_training_images_only(run, tmp_path, backend) -> None:
    config, supernet = load_run(run)
    evaluator = evaluator_for_run(config, "fashion-mnist")
    arch = supernet.parse_arch(ARCH)
    # The images are the evaluator's calibration set: the run's held-out training images
    # (by index: the held-out split, which training never reads), never the test file.
    splits = config.open_splits("fashion-mnist")
    calibration = evaluator.calibration_set
    assert list(calibration.indices) == list(splits.holdout.indices)
    assert not set(splits.holdout.indices) & set(splits.train.indices)
    assert calibration.dataset is not splits.test.dataset
    assert len(calibration.dataset) > len(splits.test)  # the training file (320+160 vs 64)

    net = supernet.extract(arch).eval()
    fp32 = tmp_path / "model.onnx"
    export_and_check_onnx(net, 24, fp32, threads=1)
    held_out = evaluator.batches("calibration", 24)
    folders = [tmp_path / name for name in "abc"]
    for folder in folders:
        folder.mkdir()
    a, with_test = write_int8(net, fp32, folders[0], Int8Images(held_out), backend=backend)
    # Whatever test images are given, the quantized model is the same file: its ranges
    # come from the held-out images alone.
    test = evaluator.batches("test", 24)
    b, _ = write_int8(net, fp32, folders[1], Int8Images(held_out, test=test), backend=backend)
    assert _bytes(a) == _bytes(b)
    assert with_test["top1"] is None and with_test["backend"] == backend
    # Other held-out images give other ranges: the bytes do depend on the images.
    shifted = [(images * 0.5, labels) for images, labels in held_out]
    images = Int8Images(shifted, min_agreement=0.0)
    c, _ = write_int8(net, fp32, folders[2], images, backend=backend)
    assert _bytes(a) != _bytes(c)


@pytest.mark.parametrize("backend", INT8_BACKENDS)
def test_a_failed_agreement_check_keeps_nothing(run, tmp_path, backend) -> None:
    config, supernet = load_run(run)
    evaluator = evaluator_for_run(config, "fashion-mnist")
    net = supernet.extract(supernet.parse_arch(ARCH)).eval()
    fp32 = tmp_path / "model.onnx"
    export_and_check_onnx(net, 24, fp32, threads=1)
    from onceforall.storage.onnx_export import ExportError

    held_out = evaluator.batches("calibration", 24)
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(ExportError, match=r"predicts the FP32 network's class on only"):
        write_int8(net, fp32, folder, Int8Images(held_out, min_agreement=1.01), backend=backend)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("backend", INT8_BACKENDS)
def test_the_int8_top1_specialisation_reports_is_the_exports(run, tmp_path, backend) -> None:
    """``int8_top1`` (the INT8 column of ``ofa specialize``) measures the model an export
    writes: the same recalibrated network, quantized on the same held-out images, scored
    on the same test images (for LiteRT, without the ONNX file its quantizer does not
    read)."""
    from onceforall.evaluation import recalibrate_bn

    config, supernet = load_run(run)
    evaluator = evaluator_for_run(config, "fashion-mnist")
    arch = supernet.parse_arch(ARCH)
    top1 = int8_top1(supernet, arch, evaluator, backend)
    held_out = evaluator.batches("calibration", arch.r)
    net = recalibrate_bn(supernet, arch, held_out, evaluator.calibration_images).eval()
    fp32 = tmp_path / "model.onnx"
    export_and_check_onnx(net, arch.r, fp32, threads=1)
    images = Int8Images(held_out, test=evaluator.batches("test", arch.r), min_agreement=0.0)
    _, record = write_int8(net, fp32, tmp_path, images, backend=backend)
    assert top1 == pytest.approx(record["top1"])


@pytest.mark.slow  # an INT8 table: every block shape quantized and timed (about a minute)
def test_a_run_keeps_an_int8_table_beside_its_own_and_searches_on_it(run, capsys) -> None:
    layout = RunLayout(run)
    args = ["--run", str(run), "--num-archs", "8", "--calibration-images", "32"]
    assert main(["acc-dataset", *args, "--eval-images", "32"]) == 0
    assert main(["train-predictor", "--run", str(run), "--epochs", "5"]) == 0
    table_args = ["--resolutions", "24", "--repeats", "3", "--threads", "1"]
    own = ["latency-table", "--run", str(run), *table_args]
    assert main(own) == 0  # the run's own backend (torch: its config names none)
    assert main([*own, "--backend", "onnxruntime-int8"]) == 0
    int8_path = layout.latency_table_of("onnxruntime-int8")
    _, supernet = load_run(run)
    table = LatencyTable.load(int8_path, supernet)
    assert table.backend == "onnxruntime-int8" and "onnxruntime" in table.versions
    assert LatencyTable.load(layout.latency_table, supernet).backend == "torch"  # untouched
    capsys.readouterr()
    target = "latency_ms<=1000"
    search = ["search", "--run", str(run), "--target", target, "--generations", "5"]
    assert main([*search, "--backend", "onnxruntime-int8"]) == 0
    spec = ["specialize", "--run", str(run), "--target", target, "--generations", "5"]
    assert main([*spec, "--backend", "onnxruntime-int8", "--random-baseline", "0"]) == 0
    [row] = json.loads(layout.specialized.read_text())
    assert row["measured_latency_ms"] > 0 and row["latency_backend"] == "onnxruntime-int8"
    assert 0 <= row["int8_accuracy"] <= 100  # its INT8 model, measured on the test split
    assert "int8 top-1" in capsys.readouterr().out  # beside the FP32 top-1


def test_a_backend_not_installed_names_its_extra(run, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    monkeypatch.delenv("OFA_DEBUG", raising=False)
    command = ["latency-table", "--run", str(run), "--backend", "openvino", "--repeats", "1"]
    assert main([*command, "--out", str(run / "t.json")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "ofa: the openvino backend needs the 'openvino' package, which is not installed: "
        "pip install 'onceforall[openvino]'"
    )
    assert not (run / "t.json").exists()
    # OpenVINO's INT8 needs NNCF too: the same extra.
    monkeypatch.delitem(sys.modules, "openvino")
    monkeypatch.setitem(sys.modules, "nncf", None)
    command[command.index("openvino")] = "openvino-int8"
    assert main([*command, "--out", str(run / "t.json")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "ofa: the openvino-int8 backend needs the 'nncf' package, which is not installed: "
        "pip install 'onceforall[openvino]'"
    )
    # LiteRT: its own extra.
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    command[command.index("openvino-int8")] = "litert"
    assert main([*command, "--out", str(run / "t.json")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "ofa: the litert backend needs the 'litert_torch' package, which is not installed: "
        "pip install 'onceforall[litert]'"
    )
