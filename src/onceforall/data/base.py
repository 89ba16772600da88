"""The dataset interface of training and evaluation: items are an index or an
``(index, resolution)`` pair.

OFA trains with *elastic resolution*: every batch gets one resolution drawn from a list,
and every distributed worker must draw the same one at the same step. The batch sampler
(:mod:`.loaders`) therefore yields ``(index, resolution)`` pairs whose resolution is a
pure function of ``(seed, epoch, batch number)``; the datasets accept such pairs (or a
plain index, for evaluation at the dataset's own resolution) so that the resizing runs in
the loader's worker processes, not in the training loop.

An item whose stored image does not decode (an image folder's corrupt or truncated file)
is replaced by the next readable item of the same dataset or subset, cycling: a pure
function of the index (given the files), so a resumed run and every distributed worker
read what the others would have. Subsets replace within themselves, so a held-out image
never stands in for a training one. The dataset warns about, counts and limits the
unreadable files (:class:`~.image_folder.ImageFolderDataset`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Tuple, TypeVar, Union

import torch
from torch.utils.data import Dataset, Subset

from ..errors import FileFormatError, OnceForAllError

__all__ = [
    "DatasetNotFoundError",
    "ElasticImageDataset",
    "ElasticSubset",
    "Item",
    "UnreadableImageWarning",
    "UnreadableImagesError",
]

#: An item of an ElasticImageDataset: an index, or an ``(index, resolution)`` pair.
Item = Union[int, Tuple[int, int]]


class DatasetNotFoundError(OnceForAllError, FileNotFoundError):
    """The dataset's files are not where they were looked for (the message says where and
    how to get them)."""


class UnreadableImagesError(FileFormatError):
    """Images that do not decode: more than ``max_unreadable_images`` met while training,
    or any found by ``--check-data``; the message names the folder and some of them."""

    def __str__(self) -> str:
        # Raised in a DataLoader worker, torch raises it again in the main process with
        # the worker's traceback before the message: keep the message only.
        text = super().__str__()
        if text.startswith("Caught ") and "\nOriginal Traceback" in text:
            last = text.rstrip().rsplit("\n", 1)[-1]
            text = last.split(f"{type(self).__name__}: ", 1)[-1]
        return text


class UnreadableImageWarning(UserWarning):
    """An image that does not decode was skipped (the next readable one serves instead)."""


_D = TypeVar("_D", bound="ElasticImageDataset")


class SkipImage(Exception):
    """Raised by a dataset's ``_raw`` for an image that does not decode (after noting it):
    the item is replaced by the next readable one. Internal; never reaches a user."""


def _first_readable(load: Callable[[int], tuple], index: int, count: int) -> tuple:
    """``load(index)``, or where its image does not decode, ``load`` of the next index
    (cycling through ``count``) whose image does."""
    for step in range(max(count, 1)):  # an empty dataset: load raises its IndexError
        try:
            return load(index if step == 0 else (index + step) % count)
        except SkipImage:
            continue
    raise UnreadableImagesError(f"none of the {count} images of this split decodes")


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
            index, resolution = item, None
        return _first_readable(lambda i: self._load(i, resolution), index, len(self))

    def _load(self, index: int, resolution: int | None) -> tuple[torch.Tensor, int]:
        """Item ``index`` at ``resolution`` (None: the dataset's own); raises
        :class:`SkipImage` where its image does not decode."""
        resolution = self.resolution if resolution is None else resolution
        transform = self._transforms.get(resolution)
        if transform is None:
            transform = self._transforms[resolution] = self._build_transform(
                _check_resolution(resolution)
            )
        return transform(self._raw(index)), int(self.targets[index])

    def _raw(self, index: int):
        """The stored image at ``index``, before any transform (raises
        :class:`SkipImage` for one that does not decode)."""
        raise NotImplementedError

    def image_paths(self) -> list[Path] | None:
        """The file of each image, in index order; None for a dataset held in memory."""
        return None

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
        else:
            index, resolution = item, None
        return _first_readable(lambda i: self._load(i, resolution), index, len(self))

    def __getitems__(self, items: list) -> list:
        return [self[item] for item in items]

    def _load(self, index: int, resolution: int | None):
        inner = self.indices[index]
        if hasattr(self.dataset, "_load"):  # ours: the replacement happens here
            return self.dataset._load(inner, resolution)
        return self.dataset[inner if resolution is None else (inner, resolution)]

    def image_paths(self) -> list[Path] | None:
        """The file of each image of the subset, in its order; None when held in memory."""
        paths = _image_paths(self.dataset)
        return None if paths is None else [paths[i] for i in self.indices]

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


def _image_paths(dataset: Dataset) -> list[Path] | None:
    """``dataset.image_paths()``, also through plain torch Subsets (None: in memory)."""
    if hasattr(dataset, "image_paths"):
        return dataset.image_paths()
    if isinstance(dataset, Subset):
        paths = _image_paths(dataset.dataset)
        return None if paths is None else [paths[i] for i in dataset.indices]
    return None


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
