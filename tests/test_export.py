"""Exporting specialised sub-networks (safetensors + ONNX) and loading them back without
the supernet; Pareto plots."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

import onceforall
from onceforall.data import make_loader, open_dataset, subset_for_budget
from onceforall.deploy import export as export_module
from onceforall.deploy.export import (
    ExportError,
    MissingDependencyError,
    export_subnet,
    load_exported,
)
from onceforall.deploy.plot import ChosenPoint, plot_pareto
from onceforall.evaluation import evaluate, recalibrate_bn
from onceforall.nn.elastic_mbconv import ElasticMBConv
from onceforall.storage.atomic import write_bytes_atomic
from tests.conftest import needs_fashion_mnist, randomize

pytestmark = needs_fashion_mnist

N_CALIBRATION = 200  # not a multiple of the batch size: the last batch is cut


@pytest.fixture(scope="module")
def supernet() -> onceforall.Supernet:
    torch.manual_seed(0)
    net = onceforall.create_supernet("ofa_mbv3_w1.0", num_classes=10, resolutions=[24, 32])
    return randomize(net, seed=1)


@pytest.fixture(scope="module")
def datasets():
    calibration = subset_for_budget(open_dataset("fashion-mnist", "train"), 256, seed=0)
    test = subset_for_budget(open_dataset("fashion-mnist", "test"), 256, seed=1)
    return calibration, test


def loader(dataset, resolution: int):
    return make_loader(dataset, 64, [resolution], train=False, seed=0, num_workers=0)


@pytest.fixture(scope="module")
def archs(supernet) -> list[onceforall.Arch]:
    space = supernet.space
    return [space.smallest(32), space.sample(5), space.largest(24)]


@pytest.fixture(scope="module")
def exports(supernet, datasets, archs, tmp_path_factory) -> list[export_module.ExportResult]:
    calibration, test = datasets
    return [
        export_subnet(
            supernet,
            arch,
            tmp_path_factory.mktemp(f"export{i}"),
            calibration_loader=loader(calibration, arch.r),
            test_loader=loader(test, arch.r),
            n_calibration=N_CALIBRATION,
            threads=1,
            extra_metadata={"source_run": "runs/test", "note": "unit test"},
        )
        for i, arch in enumerate(archs)
    ]


@pytest.fixture(scope="module")
def reference(supernet, datasets):
    """The extracted sub-network of an arch, recalibrated independently of the export."""
    cache: dict[onceforall.Arch, torch.nn.Module] = {}

    def get(arch: onceforall.Arch) -> torch.nn.Module:
        if arch not in cache:
            net = recalibrate_bn(supernet, arch, loader(datasets[0], arch.r), N_CALIBRATION)
            cache[arch] = net.eval()
        return cache[arch]

    return get


def sample_images(datasets, resolution: int, n: int = 64) -> torch.Tensor:
    return next(iter(loader(datasets[1], resolution)))[0][:n]


@pytest.mark.parametrize("index", range(3))
@torch.no_grad()
def test_loaded_model_computes_the_recalibrated_subnet(
    reference, datasets, exports, index, tmp_path
) -> None:
    result = exports[index]
    expected_net = reference(result.arch)
    images = sample_images(datasets, result.arch.r)
    expected = expected_net(images)
    assert expected.std(0).mean() > 1e-3  # outputs depend on the image: not a trivial net

    loaded = load_exported(result.out_dir)
    assert not loaded.training
    assert not any(isinstance(m, (onceforall.Supernet, ElasticMBConv)) for m in loaded.modules())
    torch.testing.assert_close(loaded(images), expected, atol=1e-5, rtol=0)

    # A file in the folder names the export too; a copy of the folder loads the same.
    rebuilt = load_exported(copy_export(result, tmp_path) / export_module.WEIGHTS)
    torch.testing.assert_close(rebuilt(images), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("index", range(3))
@torch.no_grad()
def test_onnx_model_matches_pytorch(datasets, exports, index) -> None:
    import onnxruntime

    result = exports[index]
    session = onnxruntime.InferenceSession(
        str(result.onnx_path), providers=["CPUExecutionProvider"]
    )
    assert isinstance(session.get_inputs()[0].shape[0], str)  # dynamic batch axis
    net = load_exported(result.out_dir)
    for n in (1, 7):
        images = sample_images(datasets, result.arch.r, n)
        expected = net(images).numpy()
        (logits,) = session.run(None, {"input": images.numpy()})
        assert logits.shape == (n, 10)
        scale = max(1.0, float(np.abs(expected).max()))
        assert np.abs(logits - expected).max() <= 1e-4 * scale
    assert result.metadata["onnx"]["max_abs_diff"] <= result.metadata["onnx"]["tolerance"]


@pytest.mark.parametrize("index", range(3))
def test_metadata_records_what_was_measured(supernet, reference, datasets, exports, index) -> None:
    result = exports[index]
    arch = result.arch
    metadata = json.loads(result.metadata_path.read_text())
    assert metadata == result.metadata

    expected_top1 = evaluate(reference(arch), loader(datasets[1], arch.r))
    assert metadata["top1"] == pytest.approx(expected_top1["top1"]) == result.top1
    assert metadata["test_images"] == 256
    assert metadata["bn_calibration_images"] == N_CALIBRATION
    assert metadata["macs"] == supernet.macs(arch) == result.macs
    loaded = load_exported(result.out_dir)
    assert (
        metadata["params"] == supernet.params(arch) == sum(p.numel() for p in loaded.parameters())
    )
    assert metadata["latency_ms"] > 0 and metadata["latency_ms"] == result.latency_ms
    assert metadata["latency"]["device"] == "cpu" and metadata["latency"]["device_description"]
    assert metadata["latency"]["batch_size"] == 1 and metadata["latency"]["threads"] == 1
    assert metadata["latency"]["resolution"] == arch.r
    assert metadata["torch_version"] == torch.__version__
    assert metadata["source_run"] == "runs/test" and metadata["note"] == "unit test"
    assert metadata["supernet"] == "ofa_mbv3_w1.0"
    assert metadata["arch"] == arch.to_dict() == json.loads(result.arch_path.read_text())
    assert json.loads(result.arch_path.read_text())["r"] == [arch.r]
    assert datetime.fromisoformat(metadata["created"]).tzinfo is not None
    assert json.loads(result.spec_path.read_text()) == json.loads(json.dumps(loaded.spec()))

    files = sorted(p.name for p in result.out_dir.iterdir())
    assert files == sorted(
        ["arch.json", "metadata.json", "model.onnx", "model.safetensors", "spec.json"]
    )
    for name, record in metadata["files"].items():
        data = (result.out_dir / name).read_bytes()
        assert record == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def copy_export(result, tmp_path: Path, without: tuple[str, ...] = ()) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(result.out_dir, target)
    for name in without:
        (target / name).unlink()
    return target


def rehash(target: Path) -> None:
    """Record the folder's files as they now are in its metadata.json: an export that
    is consistent by its hashes but whose files disagree with each other."""
    metadata = json.loads((target / "metadata.json").read_text())
    for name in metadata["files"]:
        data = (target / name).read_bytes()
        metadata["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (target / "metadata.json").write_text(json.dumps(metadata))


@pytest.mark.parametrize(
    "missing", ["model.safetensors", "spec.json", "arch.json", "model.onnx", "metadata.json"]
)
def test_an_incomplete_export_is_refused_naming_the_file(exports, tmp_path, missing) -> None:
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_exported(tmp_path / "nowhere")
    target = copy_export(exports[0], tmp_path, without=(missing,))
    with pytest.raises(ExportError, match=rf"{re.escape(missing)} not found.*complete"):
        load_exported(target)


@pytest.mark.parametrize("name", ["spec.json", "arch.json", "model.onnx"])
def test_an_edited_file_of_the_export_is_refused(exports, archs, tmp_path, name) -> None:
    target = copy_export(exports[0], tmp_path)
    if name == "model.onnx":
        (target / name).write_bytes((target / name).read_bytes()[:-10])
    else:  # a valid JSON of another arch: builds another network without the hash check
        value = json.loads((target / name).read_text())
        other = archs[2].to_dict()
        value = {**value, "arch": other} if name == "spec.json" else other
        (target / name).write_text(json.dumps(value))
    with pytest.raises(ExportError, match=rf"{re.escape(name)} is corrupted or was changed"):
        load_exported(target)


def test_corrupted_weights_are_refused(exports, tmp_path) -> None:
    target = copy_export(exports[0], tmp_path)
    weights = target / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped bit pattern in the tensor data: still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="corrupted or was changed: its SHA-256"):
        load_exported(target)

    # A truncated file whose hash was recorded anyway is caught by safetensors.
    weights.write_bytes(bytes(data[: len(data) // 2]))
    rehash(target)
    with pytest.raises(ExportError, match="not a readable safetensors file"):
        load_exported(target)


def test_mismatching_weights_name_the_keys(exports, archs, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    target = copy_export(exports[0], tmp_path)
    weights = target / "model.safetensors"
    tensors = load_file(weights)
    tensors["extra.weight"] = tensors.pop("classifier.weight")
    save_file(tensors, weights)
    rehash(target)
    with pytest.raises(ExportError) as info:
        load_exported(target)
    message = str(info.value)
    assert "missing keys (1): classifier.weight" in message
    assert "unexpected keys (1): extra.weight" in message

    # Weights of the smallest arch with the spec of the largest: other shapes and keys.
    target = copy_export(exports[0], tmp_path / "b")
    spec = json.loads((target / "spec.json").read_text())
    spec["arch"] = archs[2].to_dict()
    (target / "spec.json").write_text(json.dumps(spec))
    (target / "arch.json").write_text(archs[2].to_json())
    rehash(target)
    with pytest.raises(ExportError, match="shape mismatches"):
        load_exported(target)
    (target / "arch.json").write_text(archs[0].to_json())
    rehash(target)
    with pytest.raises(ExportError, match="another arch"):
        load_exported(target)


def test_failed_onnx_check_leaves_no_onnx_file(
    supernet, datasets, archs, tmp_path, monkeypatch
) -> None:
    import onceforall.storage.onnx_export as onnx_module

    real = onnx_module.onnx_outputs
    monkeypatch.setattr(
        onnx_module,
        "onnx_outputs",
        lambda *args: [x + 0.5 for x in real(*args)],  # a wrong model
    )
    arch = archs[0]
    with pytest.raises(ExportError, match="ONNX model disagrees with PyTorch"):
        export_subnet(
            supernet,
            arch,
            tmp_path,
            calibration_loader=loader(datasets[0], arch.r),
            n_calibration=64,
        )
    assert os.listdir(tmp_path) == []  # neither model.onnx nor a temporary file


def test_export_without_onnx_or_test_set(supernet, datasets, archs, exports, tmp_path) -> None:
    arch = archs[1]
    target = copy_export(exports[0], tmp_path)  # a previous export's files are replaced
    result = export_subnet(
        supernet, arch, target, calibration_loader=loader(datasets[0], arch.r), onnx=False
    )
    assert result.onnx_path is None and result.top1 is None
    assert not (target / "model.onnx").exists()  # the stale one is gone
    assert result.metadata["onnx"] is None and result.metadata["bn_calibration_images"] == 256
    assert load_exported(target).arch == arch

    wrong = 32 if arch.r == 24 else 24
    with pytest.raises(ValueError, match=f"{wrong}x{wrong} images but the arch runs at"):
        export_subnet(supernet, arch, tmp_path / "x", calibration_loader=loader(datasets[0], wrong))
    with pytest.raises(ValueError, match="may not overwrite top1"):
        export_subnet(
            supernet,
            arch,
            tmp_path / "y",
            calibration_loader=loader(datasets[0], arch.r),
            onnx=False,
            extra_metadata={"top1": 99.0},
        )
    with pytest.raises(ValueError, match="JSON-serialisable"):
        export_subnet(
            supernet,
            arch,
            tmp_path / "z",
            calibration_loader=loader(datasets[0], arch.r),
            onnx=False,
            extra_metadata={"when": datetime.now()},
        )


def _never_read():
    raise AssertionError("the export went on to recalibrate before refusing its --out")
    yield


def test_an_out_that_is_not_an_export_is_refused_before_any_work(
    supernet, archs, exports, tmp_path
) -> None:
    arch = archs[0]
    a_file = tmp_path / "model.bin"
    a_file.write_bytes(b"mine")
    with pytest.raises(ExportError, match="is a file; an export is a folder"):
        export_subnet(supernet, arch, a_file, calibration_loader=_never_read())
    assert a_file.read_bytes() == b"mine"
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(ExportError, match="not empty and is not an export"):
        export_subnet(supernet, arch, home, calibration_loader=_never_read())
    assert os.listdir(home) == ["thesis.tex"]


HOLDER = """
import sys, time
from onceforall.storage.run_guard import lock_beside
with lock_beside(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_export_into_one_folder_is_refused_at_once(supernet, archs, tmp_path) -> None:
    import subprocess

    out = tmp_path / "export"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(onceforall.OnceForAllError, match=f"in use by process {holder.pid}"):
            export_subnet(supernet, archs[0], out, calibration_loader=_never_read())
    finally:
        holder.kill()
        holder.wait()


def test_what_a_killed_export_left_is_cleared_and_none_is_left_inside(
    supernet, datasets, archs, exports, tmp_path
) -> None:
    arch = archs[0]
    target = copy_export(exports[1], tmp_path)
    # What a killed export left beside the folder: its half-built folder and, from a
    # system without the atomic exchange, the old folder moved aside.
    for kind in ("tmp", "old"):
        left = tmp_path / f".copy.4242.0123abcd.{kind}"
        left.mkdir()
        (left / "model.safetensors").write_bytes(b"half" * 1000)
    export_subnet(supernet, arch, target, calibration_loader=loader(datasets[0], arch.r))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".copy.lock", "copy"]
    assert sorted(os.listdir(target)) == sorted([*exports[0].metadata["files"], "metadata.json"])
    assert load_exported(target).arch == arch


def test_missing_optional_packages_name_the_extra(supernet, datasets, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'onceforall\[deploy\]'"):
        export_subnet(supernet, supernet.space.smallest(24), tmp_path, calibration_loader=[])
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(MissingDependencyError, match="matplotlib"):
        plot_pareto(tmp_path / "p.png", [], [], [], cost_label="MMACs")
    assert os.listdir(tmp_path) == []


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch) -> None:
    path = tmp_path / "spec.json"
    write_bytes_atomic(path, b"old")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_bytes_atomic(path, b"new contents")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["spec.json"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_atomic_directory_replaces_a_folder_as_a_whole(tmp_path, monkeypatch, exchange) -> None:
    from onceforall.storage import atomic

    if not exchange:
        monkeypatch.setattr(atomic, "_RENAMEAT2", None)
    elif atomic._RENAMEAT2 is None:
        pytest.skip("no renameat2 on this system")
    folder = tmp_path / "export"
    for contents in (b"first", b"second"):
        with atomic.atomic_directory(folder) as temp:
            assert temp.parent == tmp_path and temp.name.startswith(".export.")
            (temp / "a").write_bytes(contents)
            (temp / "b").write_bytes(contents)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == {"a": contents, "b": contents}
        assert os.listdir(tmp_path) == ["export"]
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_directory(folder) as temp:
            (temp / "a").write_bytes(b"third")
            raise KeyboardInterrupt
    assert (folder / "a").read_bytes() == b"second" and os.listdir(tmp_path) == ["export"]


def test_plot_pareto_writes_a_png(tmp_path) -> None:
    rng = np.random.default_rng(0)
    costs = rng.uniform(5, 50, 200)
    sampled = [(float(c), float(70 + 10 * np.log(c) + rng.normal())) for c in costs]
    front = [(10.0, 90.0), (20.0, 93.0), (40.0, 95.0)]
    chosen = [(10.0, 89.5, "10 ms"), ChosenPoint(20.0, 92.1, "20 ms", predicted=93.0), (40, 95)]
    path = plot_pareto(
        tmp_path / "pareto.png", sampled, front, chosen, cost_label="latency (ms)", title="t"
    )
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    assert os.listdir(tmp_path) == ["pareto.png"]


@pytest.mark.slow
def test_dynamo_exporter_is_used_where_torchscript_is_gone(
    supernet, datasets, archs, tmp_path, monkeypatch
) -> None:
    real = torch.onnx.export

    def without_torchscript(*args, dynamo: bool = True, **kwargs):
        if not dynamo:
            raise RuntimeError("the TorchScript exporter was removed")
        return real(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", without_torchscript)
    arch = archs[1]
    result = export_subnet(
        supernet, arch, tmp_path, calibration_loader=loader(datasets[0], arch.r), n_calibration=64
    )
    assert result.metadata["onnx"]["exporter"] == "dynamo"
    assert result.metadata["onnx"]["dynamic_batch"]
    assert result.metadata["onnx"]["checked_batches"] == [1, 2, 5]
