"""Datasets for progressive-shrinking training.

Two layouts are read: Fashion-MNIST as its four IDX files (the Debian package
``dataset-fashion-mnist`` installs them in ``/usr/share/datasets/fashion-mnist``), and any
torchvision ImageFolder tree with ``train/`` and ``val/`` splits (ImageNet and the like).

OFA trains with *elastic resolution*: every batch gets one resolution drawn from a list,
and every distributed worker must draw the same one at the same step. The batch sampler
here therefore yields ``(index, resolution)`` pairs whose resolution is a pure function of
``(seed, epoch, batch number)``; the datasets accept such pairs (or a plain index, for
evaluation at the dataset's own resolution) so that the resizing runs in the loader's
worker processes, not in the training loop.
"""

from __future__ import annotations

import copy
import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Callable, Tuple, TypeVar, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import (
    Dataset,
    Subset,
)
from torchvision.transforms import v2

__all__ = [
    "DEFAULT_FASHION_MNIST_ROOT",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DatasetNotFoundError",
    "ElasticImageDataset",
    "ElasticSubset",
    "FashionMNIST",
    "ImageFolderDataset",
    "open_dataset",
    "read_idx",
]

DEFAULT_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: An item of the datasets below: an index, or an ``(index, resolution)`` pair.
Item = Union[int, Tuple[int, int]]

_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_LAYOUTS = (
    "  - Fashion-MNIST: the name 'fashion-mnist' (reads "
    f"{DEFAULT_FASHION_MNIST_ROOT}), or a folder holding the four IDX files "
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte (each may end in .gz);\n"
    "  - an image folder in torchvision ImageFolder layout: "
    "<folder>/train/<class>/*.jpg and <folder>/val/<class>/*.jpg"
)


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where they were looked for (the message says where and
    how to get them)."""


# --------------------------------------------------------------------------- IDX files


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a native-endian array.

    The header is checked against the data: a bad magic number, an unknown element type or
    a size that disagrees with the stated dimensions raises ``ValueError`` naming the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({error})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    zero, code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path}: not an IDX file (magic number 0x{raw[:4].hex()}; expected 0x0000TTNN "
            "with element type TT in 08, 09, 0B, 0C, 0D, 0E and NN >= 1 dimensions)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({ndim} dimensions announced)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: IDX file {problem}: header announces shape {dims} of {dtype.name} "
            f"({expected} bytes of data), the file holds {actual}"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


# --------------------------------------------------------------------------- datasets

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


def _grey_to_rgb(image: torch.Tensor) -> torch.Tensor:
    return image.repeat(3, 1, 1)


class FashionMNIST(ElasticImageDataset):
    """Fashion-MNIST from its IDX files, held in memory as one uint8 tensor ``(N, 28, 28)``.

    ``split`` is ``"train"`` (60,000 images) or ``"test"`` (10,000). Files may be gzipped
    or not. Grey images are replicated to 3 channels so ImageNet-style networks take them.
    Transforms run on tensors: training crops with scale ``(0.35, 1)`` by default (the
    images are small and centred; ImageNet's 0.08 would often crop away the garment).
    """

    def __init__(
        self,
        root: str | os.PathLike = DEFAULT_FASHION_MNIST_ROOT,
        split: str = "train",
        *,
        augment: bool = False,
        resolution: int = 28,
        scale: tuple[float, float] = (0.35, 1.0),
    ) -> None:
        super().__init__(augment=augment, resolution=resolution, scale=scale)
        if split not in _FASHION_MNIST_FILES:
            raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
        self.root = Path(root)
        self.split = split
        image_file, label_file = (self._locate(name) for name in _FASHION_MNIST_FILES[split])
        images, labels = read_idx(image_file), read_idx(label_file)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"{image_file}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}"
            )
        if labels.shape != images.shape[:1] or labels.dtype != np.uint8:
            raise ValueError(
                f"{label_file}: expected {images.shape[0]} uint8 labels to match "
                f"{image_file.name}, got {labels.dtype} {labels.shape}"
            )
        if labels.size and labels.max() >= len(_FASHION_MNIST_CLASSES):
            raise ValueError(f"{label_file}: label {labels.max()} outside 0..9")
        self.images = torch.from_numpy(images)
        self.targets = torch.from_numpy(labels).long()
        self.classes = list(_FASHION_MNIST_CLASSES)

    def _locate(self, name: str) -> Path:
        for candidate in (self.root / f"{name}.gz", self.root / name):
            if candidate.is_file():
                return candidate
        where = "in" if self.root.is_dir() else "in the folder (which does not exist)"
        expected = " and ".join(f"{n}[.gz]" for n in _FASHION_MNIST_FILES[self.split])
        raise DatasetNotFoundError(
            f"Fashion-MNIST {self.split} split not found {where} {self.root}: expected "
            f"{expected}. Install the files with `apt-get install dataset-fashion-mnist` "
            f"(they go to {DEFAULT_FASHION_MNIST_ROOT}), or point --data at a folder "
            "holding the four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (gzipped or not)."
        )

    def _raw(self, index: int) -> torch.Tensor:
        return self.images[index].unsqueeze(0)

    def _build_transform(self, resolution: int) -> Callable:
        if self.augment:
            geometry = [
                v2.RandomResizedCrop(resolution, scale=self.scale, antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        else:
            geometry = [v2.Resize([resolution, resolution], antialias=True)]
        return v2.Compose(
            [
                *geometry,
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize([FASHION_MNIST_MEAN], [FASHION_MNIST_STD]),
                _grey_to_rgb,
            ]
        )


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    found = []
    for directory, subfolders, files in os.walk(folder, followlinks=True):
        subfolders[:] = sorted(s for s in subfolders if not s.startswith("."))
        found += [
            Path(directory, f) for f in sorted(files) if f.lower().endswith(_IMAGE_EXTENSIONS)
        ]
    return found


class ImageFolderDataset(ElasticImageDataset):
    """Images in torchvision ImageFolder layout: ``root/{train,val}/<class>/*.jpg``.

    Class indices follow the sorted class-folder names, and ``train/`` and ``val/`` must
    name the same classes (when both exist). Images are converted to RGB and normalised
    with ImageNet statistics; evaluation resizes to ``int(r / 0.875)`` and centre-crops
    ``r``. ``color_jitter`` adds the light brightness/saturation jitter of the ImageNet
    recipe to training.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        augment: bool = False,
        resolution: int = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        color_jitter: bool = True,
    ) -> None:
        super().__init__(augment=augment, resolution=resolution, scale=scale)
        if split not in ("train", "val"):
            raise ValueError(f"image-folder split must be 'train' or 'val', got {split!r}")
        self.root = Path(root)
        self.split = split
        self.color_jitter = color_jitter
        layout = f"{self.root}/train/<class>/*.jpg and {self.root}/val/<class>/*.jpg"
        folder = self.root / split
        if not folder.is_dir():
            raise DatasetNotFoundError(f"{folder} is not a folder; expected the layout {layout}")
        self.classes = _class_folders(folder)
        if not self.classes:
            raise DatasetNotFoundError(
                f"{folder} holds no class folders; expected the layout {layout}"
            )
        other = self.root / ("val" if split == "train" else "train")
        if other.is_dir() and _class_folders(other) != self.classes:
            theirs = set(_class_folders(other))
            raise ValueError(
                f"train/ and val/ of {self.root} name different classes: only in "
                f"{split}/: {sorted(set(self.classes) - theirs)}, only in {other.name}/: "
                f"{sorted(theirs - set(self.classes))}; both need one folder per class"
            )
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            files = _image_files(folder / name)
            if not files:
                raise ValueError(
                    f"class folder {folder / name} holds no images (extensions: "
                    f"{', '.join(_IMAGE_EXTENSIONS)}); every class needs images in each split"
                )
            self.samples += [(path, label) for path in files]
        self.targets = torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def _raw(self, index: int) -> Image.Image:
        with Image.open(self.samples[index][0]) as image:
            return image.convert("RGB")

    def _build_transform(self, resolution: int) -> Callable:
        if self.augment:
            geometry = [
                v2.RandomResizedCrop(resolution, scale=self.scale, antialias=True),
                v2.RandomHorizontalFlip(),
            ]
            if self.color_jitter:
                geometry.append(v2.ColorJitter(brightness=32 / 255, saturation=0.5))
        else:
            geometry = [
                v2.Resize(int(resolution / 0.875), antialias=True),
                v2.CenterCrop(resolution),
            ]
        return v2.Compose(
            [
                *geometry,
                v2.PILToTensor(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )


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


def open_dataset(
    path_or_name: str | os.PathLike, split: str = "train", **options
) -> ElasticImageDataset:
    """Open ``"fashion-mnist"``, a folder of Fashion-MNIST IDX files, or an image folder
    with ``train/`` and ``val/``.

    ``split`` is ``"train"``, or ``"val"``/``"test"`` for the evaluation split of either
    layout (Fashion-MNIST's ``test``, an image folder's ``val``). ``options`` go to the
    dataset's constructor (``augment``, ``resolution``, ``scale``...).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    path = Path(path_or_name)
    if path.is_dir():
        names = {n for pair in _FASHION_MNIST_FILES.values() for n in pair}
        if any((path / n).is_file() or (path / f"{n}.gz").is_file() for n in names):
            return FashionMNIST(path, "train" if split == "train" else "test", **options)
        if (path / "train").is_dir() or (path / "val").is_dir():
            return ImageFolderDataset(path, "train" if split == "train" else "val", **options)
        problem = f"{path} holds neither Fashion-MNIST IDX files nor train/ and val/ folders"
    elif str(path_or_name).lower() in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        return FashionMNIST(split="train" if split == "train" else "test", **options)
    else:
        problem = f"{path} is not a folder nor a known dataset name"
    raise DatasetNotFoundError(f"{problem}. Accepted:\n{_LAYOUTS}")
