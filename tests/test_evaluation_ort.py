"""Measuring sub-networks with ONNX Runtime: the same BN statistics, logits and top-1 as
eager PyTorch's ``recalibrate_bn`` + ``evaluate``, on real Fashion-MNIST images."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from torch import nn

import onceforall
from onceforall.data import DatasetNotFoundError, FashionMNIST, subset_for_budget
from onceforall.data.fashion_mnist import DEFAULT_FASHION_MNIST_ROOT
from onceforall.errors import ConfigError
from onceforall.evaluation import SubnetEvaluator, evaluate, recalibrate_bn
from onceforall.training.config import SpecializeConfig
from tests.conftest import needs_fashion_mnist, randomize

pytest.importorskip("onnxruntime")
pytestmark = needs_fashion_mnist


@pytest.fixture(scope="module")
def evaluator() -> SubnetEvaluator:
    try:
        train, test = (FashionMNIST(DEFAULT_FASHION_MNIST_ROOT, s) for s in ("train", "test"))
    except DatasetNotFoundError as error:
        pytest.skip(str(error))
    return SubnetEvaluator(
        subset_for_budget(train, 96, 0),
        subset_for_budget(test, 80, 0),
        calibration_images=96,
        batch_size=32,
        num_workers=0,
    )


@pytest.fixture(scope="module")
def supernets() -> dict[str, onceforall.Supernet]:
    """Two families with non-trivial weights and BN statistics, at Fashion-MNIST sizes."""
    torch.manual_seed(0)
    return {
        name: randomize(
            onceforall.create_supernet(name, num_classes=10, resolutions=[24, 28, 32]), seed=i
        )
        for i, name in enumerate(("ofa_mbv3_w1.0", "ofa_proxyless_w1.3"))
    }


def _bns(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("family", ["ofa_mbv3_w1.0", "ofa_proxyless_w1.3"])
def test_same_statistics_logits_and_top1_as_pytorch(family, supernets, evaluator) -> None:
    from onceforall.evaluation.ort import predict, recalibrate_and_evaluate

    net = supernets[family]
    rng = random.Random(family)
    calibration_images = 70  # 32 + 32 + 6 of the calibration batches: a cut batch too
    for _ in range(3):
        arch = dataclasses.replace(net.space.sample(rng), r=rng.choice([24, 28, 32]))
        calibration = evaluator.batches("calibration", arch.r)
        test = evaluator.batches("test", arch.r)
        eager = recalibrate_bn(net, arch, calibration, calibration_images).eval()
        want = evaluate(eager, test)
        measured = net.extract(arch)
        got = recalibrate_and_evaluate(measured, calibration, calibration_images, test)
        for a, b in zip(_bns(eager), _bns(measured), strict=True):
            assert int(b.num_batches_tracked) == int(a.num_batches_tracked) == 3
            torch.testing.assert_close(b.running_mean, a.running_mean, rtol=1e-3, atol=1e-4)
            torch.testing.assert_close(b.running_var, a.running_var, rtol=1e-3, atol=1e-5)
        images = torch.cat([x for x, _ in test])
        with torch.no_grad():
            torch.testing.assert_close(measured.eval()(images), eager(images), rtol=1e-3, atol=1e-3)
            for (logits, labels), (x, y) in zip(predict(measured, test), test, strict=True):
                torch.testing.assert_close(logits, eager(x), rtol=1e-3, atol=1e-3)  # per image
                assert torch.equal(labels, y)
        assert got["images"] == want["images"] == 80
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
        assert abs(got["top1"] - want["top1"]) <= 100 / 80  # at most one image on a tie


def test_unknown_runtime_is_refused_by_name(evaluator) -> None:
    with pytest.raises(ValueError, match="runtime must be one of torch, onnxruntime, got 'tvm'"):
        SubnetEvaluator(evaluator.calibration_set, evaluator.test_set, calibration_images=8,
                        runtime="tvm")  # fmt: skip
    with pytest.raises(ConfigError, match="acc_eval_runtime 'tvm' is unknown; known: torch"):
        SpecializeConfig.from_dict({"acc_eval_runtime": "tvm"})


def test_accuracy_dataset_with_onnxruntime_labels_as_torch_does(trained_run, tmp_path) -> None:
    from onceforall.predictors.dataset import accuracy_dataset_for_run

    def rows(runtime: str) -> dict[str, float]:
        _, measured = accuracy_dataset_for_run(
            trained_run, "fashion-mnist", out=tmp_path / f"{runtime}.jsonl", num_archs=4,
            device="cpu", progress=False, runtime=runtime,
        )  # fmt: skip
        return {str(r["arch"]): r["accuracy"] for r in measured}

    torch_rows, ort_rows = rows("torch"), rows("onnxruntime")
    assert torch_rows.keys() == ort_rows.keys() and len(torch_rows) == 4
    for arch, accuracy in torch_rows.items():  # 96 images each: one image is 1.04 points
        assert abs(ort_rows[arch] - accuracy) <= 1.05
    with pytest.raises(ConfigError, match="runtime must be one of torch, onnxruntime"):
        accuracy_dataset_for_run(trained_run, "fashion-mnist", out=tmp_path / "x.jsonl",
                                 device="cpu", runtime="tvm")  # fmt: skip
