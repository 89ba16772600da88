"""The dataset interface of training and evaluation: items are an index or an
``(index, resolution)`` pair.

OFA trains with *elastic resolution*: every batch gets one resolution drawn from a list,
and every distributed worker must draw the same one at the same step. The batch sampler
(:mod:`.loaders`) therefore yields ``(index, resolution)`` pairs whose resolution is a
pure function of ``(seed, epoch, batch number)``; the datasets accept such pairs (or a
plain index, for evaluation at the dataset's own resolution) so that the resizing runs in
the loader's worker processes, not in the training loop.
"""

from __future__ import annotations

import copy
from typing import Callable, Tuple, TypeVar, Union

import torch
from torch.utils.data import Dataset, Subset

from ..errors import OnceForAllError

__all__ = ["DatasetNotFoundError", "ElasticImageDataset", "ElasticSubset", "Item"]

#: An item of an ElasticImageDataset: an index, or an ``(index, resolution)`` pair.
Item = Union[int, Tuple[int, int]]


class DatasetNotFoundError(OnceForAllError, FileNotFoundError):
    """The dataset's files are not where they were looked for (the message says where and
    how to get them)."""


_D = TypeVar("_D", bound="ElasticImageDataset")


def _check_scale(scale: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(s) for s in scale)
    if not 0 < low <= high <= 1:
        raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
    return low, high


def _check_resolution(resolution: int) -> int:
    if isinstance(resolution, bool) or int(resolution) != resolution or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    return int(resolution)


class ElasticImageDataset(Dataset):
    """A classification dataset whose items are ``(index)`` or ``(index, resolution)``.

    Returns ``(image, label)`` with ``image`` a normalised float tensor ``(3, r, r)``.
    ``augment`` picks the training transform (random resized crop, flip) over the
    evaluation one; a plain index uses ``resolution``. Change either with
    :meth:`with_transform`, which returns a copy that shares the data.
    """

    classes: list[str]
    targets: torch.Tensor  # int64, one label per image

    def __init__(self, *, augment: bool, resolution: int, scale: tuple[float, float]) -> None:
        self.augment = bool(augment)
        self.resolution = _check_resolution(resolution)
        self.scale = _check_scale(scale)
        self._transforms: dict[int, Callable] = {}

    def with_transform(
        self: _D,
        *,
        augment: bool | None = None,
        resolution: int | None = None,
        scale: tuple[float, float] | None = None,
    ) -> _D:
        """A copy sharing this dataset's images, with other transform settings."""
        other = copy.copy(self)
        if augment is not None:
            other.augment = bool(augment)
        if resolution is not None:
            other.resolution = _check_resolution(resolution)
        if scale is not None:
            other.scale = _check_scale(scale)
        other._transforms = {}
        return other

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, item: Item) -> tuple[torch.Tensor, int]:
        if isinstance(item, tuple):
            index, resolution = item
        else:
            index, resolution = item, self.resolution
        transform = self._transforms.get(resolution)
        if transform is None:
            transform = self._transforms[resolution] = self._build_transform(
                _check_resolution(resolution)
            )
        return transform(self._raw(index)), int(self.targets[index])

    def _raw(self, index: int):
        """The stored image at ``index``, before any transform."""
        raise NotImplementedError

    def _build_transform(self, resolution: int) -> Callable:
        """The transform producing ``(3, resolution, resolution)`` tensors."""
        raise NotImplementedError

    def __repr__(self) -> str:
        mode = "augment" if self.augment else f"eval at {self.resolution}"
        return f"{type(self).__name__}({len(self)} images, {len(self.classes)} classes, {mode})"


class ElasticSubset(Subset):
    """A :class:`torch.utils.data.Subset` that also accepts ``(index, resolution)`` items
    and :meth:`with_transform`, so subsets work with the elastic-resolution loaders."""

    def __getitem__(self, item: Item):
        if isinstance(item, tuple):
            index, resolution = item
            return self.dataset[(self.indices[index], resolution)]
        return self.dataset[self.indices[item]]

    def __getitems__(self, items: list) -> list:
        return [self[item] for item in items]

    def with_transform(self, **options) -> ElasticSubset:
        """The same subset of ``self.dataset.with_transform(**options)``."""
        return ElasticSubset(_with_transform(self.dataset, **options), self.indices)

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def targets(self) -> torch.Tensor:
        return torch.as_tensor(self.dataset.targets)[
            torch.as_tensor(self.indices, dtype=torch.long)
        ]


def _with_transform(dataset: Dataset, **options) -> Dataset:
    """``dataset.with_transform(**options)``, also through plain torch Subsets."""
    if hasattr(dataset, "with_transform"):
        return dataset.with_transform(**options)
    if isinstance(dataset, Subset):
        return ElasticSubset(_with_transform(dataset.dataset, **options), dataset.indices)
    raise TypeError(
        f"{type(dataset).__name__} cannot set its transform; use a dataset from "
        "onceforall.data (open_dataset, FashionMNIST, ImageFolderDataset) or a Subset of one"
    )
