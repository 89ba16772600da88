"""Shared fixtures: supernets with non-trivial weights, and a hypothesis strategy for
architectures of a space."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

# One torch thread in the tests and the processes they start. The tests check results,
# not speed, and CI hosts may be busy: there, torch's OpenMP threads spin-waiting for a
# core slow a training step five to fifteen times (docs/benchmarks.md, "Threads on a
# busy machine"), which made the suite take three times as long.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import strategies as st

import onceforall
from onceforall import Arch, MBConvSpace
from onceforall.data import DEFAULT_FASHION_MNIST_ROOT
from onceforall.nn.elastic_mbconv import ElasticDepthwiseConv2d
from onceforall.training import TrainConfig, train

torch.set_num_threads(1)  # where torch was loaded before this file (a pytest plugin)

# Tests that train or evaluate on the real Fashion-MNIST files (make test installs them).
needs_fashion_mnist = pytest.mark.skipif(
    not (DEFAULT_FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


def archs(space: MBConvSpace) -> st.SearchStrategy[Arch]:
    """Any architecture of ``space`` (skipped slots included, with any allowed value)."""
    n = space.num_slots
    return st.builds(
        Arch,
        ks=st.lists(st.sampled_from(space.kernel_sizes), min_size=n, max_size=n).map(tuple),
        e=st.lists(st.sampled_from(space.expand_ratios), min_size=n, max_size=n).map(tuple),
        d=st.tuples(
            *[
                st.sampled_from(sorted(set(space.depths) | set(space.stage_depth_choices(s))))
                for s in range(space.num_stages)
            ]
        ),
        r=st.sampled_from(space.resolutions),
    )


@torch.no_grad()
def randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN random statistics and affine parameters and every kernel transform a
    random (non-identity) matrix, so equality tests cannot pass by accident of init."""
    gen = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
        if isinstance(module, ElasticDepthwiseConv2d):
            for matrix in module.kernel_transforms.values():
                size = matrix.shape[0]
                matrix.copy_(torch.eye(size) + torch.randn(size, size, generator=gen) * 0.1)
    return net


@torch.no_grad()
def estimate_bn_statistics(
    net: torch.nn.Module, resolution: int, gen: torch.Generator, batch: int = 8, batches: int = 2
) -> None:
    """Running statistics estimated from data (random images through the active
    sub-network, cumulative average), as after training and BN recalibration: per-channel
    values that differ, and eval-mode activations that keep their scale, so that logits
    depend on the input (a fresh init gives nearly input-independent logits)."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    net.train()
    for _ in range(batches):
        net(torch.randn(batch, 3, resolution, resolution, generator=gen))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    net.eval()


# Progressive-shrinking stages of a tiny OFA-ResNet50 run: the full network, then depth,
# expand ratio (after the channel sort) and width opened together.
RESNET_TINY_STAGES = [
    {"name": "full", "epochs": 1, "lr": 0.02, "distill": False},
    {
        "name": "elastic",
        "epochs": 1,
        "lr": 0.01,
        "subnets_per_step": 2,
        "depths": [0, 1, 2],
        "expand_ratios": [0.2, 0.25, 0.35],
        "width_mults": [0.65, 0.8, 1.0],
        "sort_channels": True,
    },
]


@pytest.fixture(scope="module")
def mbv3() -> onceforall.Supernet:
    torch.manual_seed(0)
    return randomize(onceforall.create_supernet("ofa_mbv3_w1.0", num_classes=10), seed=1)


@pytest.fixture(scope="module")
def mbv3_w12() -> onceforall.Supernet:
    torch.manual_seed(0)
    return randomize(onceforall.create_supernet("ofa_mbv3_w1.2", num_classes=7), seed=2)


@pytest.fixture(scope="module")
def proxyless() -> onceforall.Supernet:
    torch.manual_seed(0)
    return randomize(onceforall.create_supernet("ofa_proxyless_w1.3", num_classes=10), seed=3)


# One epoch of the full network on 320 Fashion-MNIST images (10 steps of 32).
TINY_TRAINING = {
    "resolutions": [24, 28],
    "eval_resolutions": [24],
    "batch_size": 32,
    "holdout_size": 160,
    "train_subset": 320,
    "test_subset": 64,
    "num_workers": 0,
    "num_random_val_archs": 0,
    "bn_recal_images": 64,
    "stages": [{"name": "full", "epochs": 1, "lr": 0.05, "distill": False}],
}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A supernet after a few real training steps on Fashion-MNIST (shared by the whole
    session: copy it before writing into it)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(TrainConfig.from_dict(TINY_TRAINING), "fashion-mnist", run, progress=False)
    return run


def metric_records(folder: Path) -> list[dict]:
    """The records of ``folder/metrics.jsonl`` (a run's or a fine-tuning's)."""
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def copy_run(run: Path, where: Path) -> Path:
    """A copy of the run directory ``run`` under ``where``, to write into."""
    return Path(shutil.copytree(run, where / "copy"))
