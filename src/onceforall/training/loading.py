"""The training data order and the optimiser, shared by progressive shrinking
(:mod:`.trainer`) and the fine-tuning of one sub-network (:mod:`.finetune`).

The order of the training batches is a pure function of (seed, epoch): a
``DistributedSampler`` even on one worker, a batch sampler that draws each batch's
resolution from the same seed, and a data-loader generator seeded per epoch. That is what
makes a run resumed mid-epoch continue exactly where it stopped.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from .. import data as datamod
from .config import TrainConfig
from .distributed import DistEnv
from .schedule import SkipBatches

__all__ = ["sgd", "train_batch_sampler", "train_loader"]


def train_batch_sampler(
    train_set: Any, config: TrainConfig, env: DistEnv
) -> datamod.ElasticResolutionBatchSampler:
    """This worker's batches of ``train_set``, each at one of ``config.resolutions``."""
    return datamod.ElasticResolutionBatchSampler(
        DistributedSampler(
            train_set,
            num_replicas=env.world_size,
            rank=env.rank,
            shuffle=True,
            seed=config.seed,
            drop_last=True,
        ),
        batch_size=config.batch_size,
        resolutions=config.resolutions,
        seed=config.seed,
    )


def train_loader(
    train_set: Any,
    sampler: datamod.ElasticResolutionBatchSampler,
    config: TrainConfig,
    device: torch.device,
    epoch: int,
    skip: int,
) -> DataLoader:
    """The batches of ``epoch``, starting ``skip`` batches in (a resumed epoch)."""
    sampler.set_epoch(epoch)
    # A generator of its own, seeded per epoch: creating the loader then draws nothing
    # from the global RNG, so a resumed run's random stream matches the original's.
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    return DataLoader(
        train_set,
        batch_sampler=SkipBatches(sampler, skip) if skip else sampler,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        generator=generator,
        persistent_workers=False,
    )


def sgd(
    parameters: Iterable[nn.Parameter], config: TrainConfig, lr: float, state: dict | None
) -> torch.optim.SGD:
    """SGD with the config's momentum and weight decay, none on biases and BN, restored
    from ``state`` where given."""
    decay, no_decay = [], []
    for param in parameters:
        (no_decay if param.ndim <= 1 else decay).append(param)
    optimizer = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
    )
    if state is not None:
        optimizer.load_state_dict(state)
    return optimizer
