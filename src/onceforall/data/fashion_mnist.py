"""Fashion-MNIST read from its four IDX files (the Debian package ``dataset-fashion-mnist``
installs them in ``/usr/share/datasets/fashion-mnist``), held in memory."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torchvision.transforms import v2

from ..errors import FileFormatError
from .base import DatasetNotFoundError, ElasticImageDataset

__all__ = [
    "DEFAULT_FASHION_MNIST_ROOT",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "FashionMNIST",
    "read_idx",
]

DEFAULT_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

FASHION_MNIST_FILES = {
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
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a native-endian array.

    The header is checked against the data: a bad magic number, an unknown element type or
    a size that disagrees with the stated dimensions
    raises :class:`~onceforall.errors.FileFormatError` (a ``ValueError``) naming the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise FileFormatError(f"{path}: corrupt or truncated gzip data ({error})") from None
    if len(raw) < 4:
        raise FileFormatError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    zero, code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise FileFormatError(
            f"{path}: not an IDX file (magic number 0x{raw[:4].hex()}; expected 0x0000TTNN "
            "with element type TT in 08, 09, 0B, 0C, 0D, 0E and NN >= 1 dimensions)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FileFormatError(f"{path}: truncated IDX header ({ndim} dimensions announced)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing bytes"
        raise FileFormatError(
            f"{path}: IDX file {problem}: header announces shape {dims} of {dtype.name} "
            f"({expected} bytes of data), the file holds {actual}"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


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
        if split not in FASHION_MNIST_FILES:
            raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
        self.root = Path(root)
        self.split = split
        image_file, label_file = (self._locate(name) for name in FASHION_MNIST_FILES[split])
        images, labels = read_idx(image_file), read_idx(label_file)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise FileFormatError(
                f"{image_file}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}"
            )
        if labels.shape != images.shape[:1] or labels.dtype != np.uint8:
            raise FileFormatError(
                f"{label_file}: expected {images.shape[0]} uint8 labels to match "
                f"{image_file.name}, got {labels.dtype} {labels.shape}"
            )
        if labels.size and labels.max() >= len(_FASHION_MNIST_CLASSES):
            raise FileFormatError(f"{label_file}: label {labels.max()} outside 0..9")
        self.images = torch.from_numpy(images)
        self.targets = torch.from_numpy(labels).long()
        self.classes = list(_FASHION_MNIST_CLASSES)

    def _locate(self, name: str) -> Path:
        for candidate in (self.root / f"{name}.gz", self.root / name):
            if candidate.is_file():
                return candidate
        where = "in" if self.root.is_dir() else "in the folder (which does not exist)"
        expected = " and ".join(f"{n}[.gz]" for n in FASHION_MNIST_FILES[self.split])
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
