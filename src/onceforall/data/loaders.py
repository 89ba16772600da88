"""Loaders: elastic-resolution batches, held-out splits and budget subsets.

The batch sampler yields ``(index, resolution)`` pairs whose resolution is a pure
function of ``(seed, epoch, batch number)``, so every distributed worker draws the same
resolution at the same step and a resumed run draws what the interrupted one would have.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    Sampler,
    SequentialSampler,
)

from .base import (
    ElasticSubset,
    UnreadableImagesError,
    _check_resolution,
    _image_paths,
    _with_transform,
)
from .datasets import open_dataset
from .image_folder import (
    DEFAULT_MAX_UNREADABLE_IMAGES,
    _images_do_not_decode,
    describe_unreadable,
    find_unreadable_images,
)

__all__ = [
    "ElasticResolutionBatchSampler",
    "Splits",
    "make_loader",
    "open_splits",
    "split_holdout",
    "subset_for_budget",
]

# --------------------------------------------------------------------------- sampling


def _check_resolutions(resolutions: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(resolutions, int):
        resolutions = (resolutions,)
    result = tuple(_check_resolution(r) for r in resolutions)
    if not result:
        raise ValueError("resolutions must not be empty")
    return result


class ElasticResolutionBatchSampler(Sampler):
    """Batches of ``(index, resolution)`` pairs, one resolution per batch.

    Indices come from ``sampler`` (a RandomSampler, a DistributedSampler...). The
    resolution of batch ``k`` in epoch ``e`` is ``resolution_at(e, k)``, a pure function of
    ``(seed, e, k)``: every distributed worker draws the same one at the same step, and a
    resumed run draws what the interrupted one would have. Call :meth:`set_epoch` before
    each epoch (it is forwarded to ``sampler``), as with DistributedSampler.
    """

    def __init__(
        self,
        sampler: Sampler[int] | Sequence[int],
        batch_size: int,
        resolutions: Sequence[int],
        seed: int,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.sampler = sampler
        self.batch_size = batch_size
        self.resolutions = _check_resolutions(resolutions)
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's resolution sequence (and the inner sampler's order)."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def resolution_at(self, epoch: int, batch: int) -> int:
        """The resolution of batch number ``batch`` (from 0) of ``epoch``."""
        rng = np.random.default_rng((self.seed, epoch, batch))
        return self.resolutions[int(rng.integers(len(self.resolutions)))]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch: list[int] = []
        number = 0
        for index in self.sampler:
            batch.append(int(index))
            if len(batch) == self.batch_size:
                resolution = self.resolution_at(self.epoch, number)
                yield [(i, resolution) for i in batch]
                batch, number = [], number + 1
        if batch and not self.drop_last:
            resolution = self.resolution_at(self.epoch, number)
            yield [(i, resolution) for i in batch]

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.sampler) // self.batch_size
        return -(-len(self.sampler) // self.batch_size)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    resolutions: int | Sequence[int],
    *,
    train: bool,
    seed: int,
    num_workers: int = 2,
    distributed: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader for training (``train=True``) or evaluation.

    Training: augmented images, reshuffled per epoch by a DistributedSampler (with
    ``num_replicas=world_size``, 1 when not distributed, so the order is a function of
    ``(seed, epoch)``), batched by :class:`ElasticResolutionBatchSampler`; incomplete last
    batches are dropped. Call ``loader.batch_sampler.set_epoch(epoch)`` before each epoch.
    Evaluation: unaugmented images in dataset order at ``max(resolutions)`` (pass an int
    for one explicit resolution); when distributed each rank gets a shard, padded to equal
    length by DistributedSampler.
    """
    resolutions = _check_resolutions(resolutions)
    if not distributed and (rank, world_size) != (0, 1):
        raise ValueError(f"rank={rank}, world_size={world_size} need distributed=True")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
    options = dict(
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    if train:
        data = _with_transform(dataset, augment=True)
        shard = DistributedSampler(data, num_replicas=world_size, rank=rank, seed=seed)
        batches = ElasticResolutionBatchSampler(shard, batch_size, resolutions, seed)
        if len(batches) == 0:
            raise ValueError(
                f"{len(shard)} training images per worker make no full batch of {batch_size}"
            )
        # Seeds the workers' augmentation, differently on each rank.
        worker_seed = int(np.random.SeedSequence((seed, rank)).generate_state(1)[0])
        generator = torch.Generator().manual_seed(worker_seed)
        return DataLoader(data, batch_sampler=batches, generator=generator, **options)
    data = _with_transform(dataset, augment=False, resolution=max(resolutions))
    if distributed:
        sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=False)
    else:
        sampler = SequentialSampler(data)
    # A generator of its own: iterating draws no number from the global RNG, so whether
    # evaluation ran (or was served from a cache) never changes a training run's stream.
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, sampler=sampler, generator=generator, **options)


# --------------------------------------------------------------------------- subsets


def split_holdout(dataset: Dataset, size: int, seed: int) -> tuple[ElasticSubset, ElasticSubset]:
    """Split off ``size`` images, chosen by ``seed``, as a held-out set.

    Returns ``(train, holdout)``, disjoint and together the whole dataset, each in
    dataset order. The holdout serves BN recalibration and the accuracy dataset, so it
    must never be trained on.
    """
    if not 0 < size < len(dataset):
        raise ValueError(
            f"holdout size must be in 1..{len(dataset) - 1} for a dataset of "
            f"{len(dataset)} images, got {size}"
        )
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    holdout = sorted(order[:size].tolist())
    train = sorted(order[size:].tolist())
    return ElasticSubset(dataset, train), ElasticSubset(dataset, holdout)


def subset_for_budget(dataset: Dataset, n: int, seed: int) -> ElasticSubset:
    """``n`` images chosen by ``seed`` (in dataset order), or all when ``n >= len``: for
    quick runs and tests."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if n >= len(dataset):
        return ElasticSubset(dataset, list(range(len(dataset))))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return ElasticSubset(dataset, sorted(order[:n].tolist()))


@dataclass(frozen=True)
class Splits:
    """The three splits of a run: training images, held-out training images (BN
    recalibration, the accuracy dataset) and the test split (reporting only)."""

    train: ElasticSubset
    holdout: ElasticSubset
    test: Dataset
    classes: list[str]

    def check_images(self, *, progress: bool = False, rank: int = 0, world_size: int = 1) -> int:
        """Decode every image the three splits hold (with ``world_size`` > 1, this
        worker's share: every ``world_size``-th from ``rank``) and raise
        :class:`UnreadableImagesError` naming how many and which do not decode. Returns how
        many were decoded: 0 for images held in memory (Fashion-MNIST, whose IDX files are
        read and checked whole when opened)."""
        paths = []
        for split in (self.train, self.holdout, self.test):
            paths += _image_paths(split) or []
        paths = paths[rank::world_size]
        bad = find_unreadable_images(paths, progress=progress)
        if bad:
            share = f" (worker {rank}'s share of {world_size})" if world_size > 1 else ""
            raise UnreadableImagesError(
                f"{_images_do_not_decode(len(bad), f'of the {len(paths)} checked{share}')}: "
                f"{describe_unreadable(bad)}; repair or remove them (an image folder reads "
                "every file with an image extension)"
            )
        return len(paths)


def open_splits(
    data: str | os.PathLike,
    *,
    holdout_size: int,
    seed: int,
    train_subset: int | None = None,
    test_subset: int | None = None,
    crop_scale_min: float = 0.08,
    max_unreadable_images: int = DEFAULT_MAX_UNREADABLE_IMAGES,
) -> Splits:
    """Open ``data`` (see :func:`open_dataset`) and split it as a training run does;
    the same arguments give the same splits, so later steps (accuracy dataset, export)
    never measure on images the supernet was trained on. An image folder skips up to
    ``max_unreadable_images`` images that do not decode per split (and process)."""
    limit = {"max_unreadable_images": max_unreadable_images}
    scale = (crop_scale_min, 1.0)
    full_train = open_dataset(data, "train", augment=True, scale=scale, **limit)
    test = open_dataset(data, "test", **limit)
    if train_subset:
        full_train = subset_for_budget(full_train, train_subset + holdout_size, seed)
    train, holdout = split_holdout(full_train, holdout_size, seed)
    if test_subset:
        test = subset_for_budget(test, test_subset, seed)
    return Splits(train, holdout, test, list(full_train.classes))
