"""One-stage training in the manner of BigNAS (SPEC section 6): the sandwich rule
(largest, random ones, smallest in every step) and in-place distillation (the others
learn from the largest's detached predictions on the same batch), against which
progressive shrinking is measured (issue 18)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import onceforall
from onceforall.errors import ConfigError
from onceforall.training import TrainConfig, train
from onceforall.training.config import StageConfig
from onceforall.training.distributed import DistEnv
from onceforall.training.epoch import EpochRunner
from onceforall.training.schedule import Position, stage_space, step_archs
from tests.conftest import needs_fashion_mnist, randomize
from tests.test_training import TINY

ALL_OPEN = {"kernel_sizes": [3, 5, 7], "expand_ratios": [3, 4, 6], "depths": [2, 3, 4]}
ONE_STAGE = {
    "name": "all_elastic",
    "epochs": 1,
    "lr": 0.05,
    "subnets_per_step": 4,
    "train_largest": True,
    "train_smallest": True,
    "inplace_distill": True,
    "distill": False,
    **ALL_OPEN,
}


def test_the_sandwich_puts_the_largest_first_and_the_smallest_last() -> None:
    space = onceforall.MBConvSpace(resolutions=(24, 32))
    plain = StageConfig("s", 1, 0.1, subnets_per_step=4, **ALL_OPEN)
    sandwich = StageConfig(
        "s", 1, 0.1, subnets_per_step=4, train_largest=True, train_smallest=True, **ALL_OPEN
    )
    for step in range(20):
        a = step_archs(space, plain, seed=0, stage_index=0, step=step)
        b = step_archs(space, sandwich, seed=0, stage_index=0, step=step)
        assert b[0] == space.largest() and b[-1] == space.smallest()
        assert b[1:-1] == a[1:-1]  # the random ones are those the step samples anyway


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"train_smallest": True, "subnets_per_step": 1}, "train_smallest needs"),
        ({"inplace_distill": True, "distill": False, "subnets_per_step": 2}, "needs train_largest"),
        (
            {"inplace_distill": True, "train_largest": True, "subnets_per_step": 1},
            "subnets_per_step >= 2",
        ),
        (
            {"inplace_distill": True, "train_largest": True, "subnets_per_step": 2},
            "set distill: false",
        ),
        ({"train_smallest": "yes", "subnets_per_step": 2}, "train_smallest"),
    ],
)
def test_a_sandwich_without_room_or_with_two_teachers_is_refused(fields, named) -> None:
    stage = {"name": "s", "epochs": 1, "lr": 0.1, **ALL_OPEN, **fields}
    with pytest.raises(ConfigError, match=named) as caught:
        TrainConfig.from_dict({**TINY, "stages": [stage]})
    assert "stages[0] (s)" in str(caught.value)


def test_inplace_distillation_teaches_the_others_with_the_largests_predictions() -> None:
    """The step's gradient is that of the largest's label loss plus, for every other
    sub-network, the soft cross-entropy against the largest's detached softmax."""
    net = randomize(
        onceforall.create_supernet("ofa_mbv3_w1.0", num_classes=10, dropout=0.0), seed=4
    )
    config = TrainConfig.from_dict({**TINY, "stages": [ONE_STAGE]})
    stage = config.stages[0]
    space = stage_space(net.space, stage)
    archs = step_archs(space, stage, seed=0, stage_index=0, step=3)
    images = torch.randn(6, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4, 5])

    expected_net = copy.deepcopy(net).train()
    expected_net.set_active(archs[0])
    largest_logits = expected_net(images)
    loss = F.cross_entropy(largest_logits, labels, label_smoothing=config.label_smoothing)
    probs = torch.softmax(largest_logits.detach(), dim=1)
    for arch in archs[1:]:
        expected_net.set_active(arch)
        loss = loss + -(probs * F.log_softmax(expected_net(images), dim=1)).sum(1).mean()
    loss.backward()

    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    runner = EpochRunner(net, optimizer, config, DistEnv(), checkpoints=None)
    runner.train_step(stage, Position(), archs, images, labels)
    compared = 0
    for (name, got), want in zip(net.named_parameters(), expected_net.parameters()):
        if want.grad is None:
            assert got.grad is None or not got.grad.any(), name
            continue
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6, msg=name)
        compared += 1
    assert compared > 10


@needs_fashion_mnist
def test_one_stage_training_needs_no_teacher_stage(tmp_path) -> None:
    """A run of one all-elastic stage with in-place distillation trains from scratch on
    real images, leaves a supernet and validates its sub-networks."""
    config = TrainConfig.from_dict({**TINY, "stages": [ONE_STAGE]})
    results = train(config, "fashion-mnist", tmp_path, progress=False)
    assert set(results["all_elastic"]) == {"smallest@32", "largest@32", "random0@32"}
    assert (tmp_path / "supernet").is_dir()
