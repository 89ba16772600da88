"""The CUDA paths: extraction exact on the GPU, the GPU computing what the CPU computes,
a run trained on the GPU loading and evaluating on a machine without one, bf16 autocast
training, fine-tuning on the GPU. Skipped where torch sees no CUDA device (CI has
none); docs/benchmarks.md ("A GPU host") records a run on one."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onceforall
from onceforall.cli import main
from onceforall.deploy.export import load_exported
from onceforall.predictors.dataset import read_accuracy_dataset
from onceforall.training import TrainConfig, load_run, train
from onceforall.training.finetune import FinetuneSettings, finetune
from tests.conftest import (
    TINY_TRAINING,
    archs,
    estimate_bn_statistics,
    metric_records,
    needs_fashion_mnist,
    randomize,
)
from tests.test_pipeline import TINY_RUN

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CUDA = torch.device("cuda")


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """cuDNN and cuBLAS without TF32 (torch allows it for convolutions by default), so
    that float32 means float32 and two computations of one function can be compared."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def supernet() -> onceforall.Supernet:
    torch.manual_seed(0)
    net = randomize(onceforall.create_supernet("ofa_mbv3_w1.0", num_classes=10), seed=1)
    estimate_bn_statistics(net, 32, torch.Generator().manual_seed(2))
    return net.to(CUDA).eval()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_extracted_net_matches_supernet_on_cuda(supernet, data) -> None:
    arch = data.draw(archs(supernet.space))
    x = torch.randn(2, 3, arch.r, arch.r, generator=torch.Generator().manual_seed(3)).to(CUDA)
    with torch.no_grad(), exact_fp32():
        supernet.set_active(arch)
        expected = supernet(x)
        subnet = supernet.extract(arch).eval()
        got = subnet(x)
    assert next(subnet.parameters()).device.type == "cuda"
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_cuda_computes_what_the_cpu_computes(supernet, data) -> None:
    arch = data.draw(archs(supernet.space))
    x = torch.randn(2, 3, arch.r, arch.r, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), exact_fp32():
        on_gpu = supernet.extract(arch).eval()
        on_cpu = copy.deepcopy(on_gpu).cpu()
        torch.testing.assert_close(on_gpu(x.to(CUDA)).cpu(), on_cpu(x), rtol=1e-3, atol=1e-3)


def _epoch_losses(folder) -> list[float]:
    return [r["train_loss"] for r in metric_records(folder) if r.get("type") == "epoch"]


@needs_fashion_mnist
@pytest.mark.parametrize("amp_dtype", [None, "bfloat16"])
def test_a_run_trained_on_cuda_loads_and_evaluates_on_the_cpu(tmp_path, amp_dtype) -> None:
    run = tmp_path / "run"
    config = TrainConfig.from_dict({**TINY_TRAINING, "amp_dtype": amp_dtype})
    train(config, "fashion-mnist", run, device="cuda", progress=False)
    losses = _epoch_losses(run)
    assert losses and all(math.isfinite(v) for v in losses)
    _, supernet = load_run(run)  # onto the CPU, whatever device wrote it
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in supernet.parameters())
    arch = supernet.space.largest()
    x = torch.randn(4, 3, 24, 24)
    with torch.no_grad(), exact_fp32():
        on_cpu = supernet.extract(arch).eval()(x)
        on_gpu = supernet.extract(arch).eval().to(CUDA)(x.to(CUDA)).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-4)


@needs_fashion_mnist
def test_finetune_on_cuda_with_a_teacher(trained_run, tmp_path) -> None:
    config, supernet = load_run(trained_run)
    arch = supernet.parse_arch({**supernet.space.sample(5).to_dict(), "r": [24]})
    start, teacher = supernet.extract(arch), supernet.extract(supernet.space.largest())
    recipe = FinetuneSettings(epochs=1, lr=0.005, warmup_epochs=0.0)
    outcome = finetune(
        start,
        config,
        "fashion-mnist",
        tmp_path / "ft",
        recipe,
        teacher=teacher,
        device="cuda",
        progress=False,
    )
    assert outcome.steps == 10  # 320 training images, batches of 32
    assert 0 <= outcome.top1_before <= 100 and 0 <= outcome.top1_after <= 100
    losses = _epoch_losses(tmp_path / "ft")
    assert len(losses) == 1 and math.isfinite(losses[0])


@needs_fashion_mnist
def test_ofa_run_on_cuda_end_to_end(tmp_path, capsys) -> None:
    # The quick preset measures its accuracy dataset with ONNX Runtime, which runs on the
    # CPU only: on a GPU, ofa run measures with PyTorch there instead of failing.
    specialize = {**TINY_RUN["specialize"], "acc_eval_runtime": "onnxruntime"}
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({**TINY_RUN, "specialize": {**specialize, "finetune_epochs": 1}}))
    run = tmp_path / "run"
    assert main(["run", "--config", str(config), "--out", str(run), "--device", "cuda"]) == 0
    printed = capsys.readouterr().out
    assert "measuring with PyTorch on cuda" in printed
    assert len(read_accuracy_dataset(run / "accuracy_dataset.jsonl")) == 12
    exports = [p for p in (run / "exports").glob("[!.]*") if p.is_dir()]
    assert len(exports) == 4  # two winners, each also fine-tuned
    for folder in exports:
        model = load_exported(folder).eval()  # on the CPU
        r = json.loads((folder / "arch.json").read_text())["r"][0]
        assert model(torch.randn(1, 3, r, r)).shape == (1, 10)


@needs_fashion_mnist
def test_finetune_resumed_on_cuda_ends_bit_identical_when_deterministic(
    trained_run, tmp_path
) -> None:
    # cuDNN's default backward kernels accumulate in a varying order, so a resumed GPU
    # fine-tuning drifts from an uninterrupted one; config.deterministic removes that.
    config, supernet = load_run(trained_run)
    config = dataclasses.replace(config, deterministic=True, checkpoint_every_steps=3)
    arch = supernet.parse_arch({**supernet.space.sample(7).to_dict(), "r": [24]})
    teacher = supernet.extract(supernet.space.largest())
    recipe = FinetuneSettings(epochs=1, lr=0.01, warmup_epochs=0.5)

    def tune(folder, **kw):
        return finetune(
            supernet.extract(arch),
            config,
            "fashion-mnist",
            tmp_path / folder,
            recipe,
            teacher=teacher,
            device="cuda",
            progress=False,
            **kw,
        )

    whole = tune("whole").network.state_dict()
    assert tune("stopped", max_steps=4).network is None
    resumed = tune("stopped", resume=True).network.state_dict()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
