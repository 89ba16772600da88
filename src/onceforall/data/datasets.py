"""Which dataset a path or name means: :func:`open_dataset` reads Fashion-MNIST (the name
``fashion-mnist`` or a folder of its IDX files) or an ImageFolder tree with ``train/`` and
``val/`` splits, and says what it accepts when the path is neither."""

from __future__ import annotations

import os
from pathlib import Path

from .base import DatasetNotFoundError, ElasticImageDataset
from .fashion_mnist import DEFAULT_FASHION_MNIST_ROOT, FASHION_MNIST_FILES, FashionMNIST
from .image_folder import ImageFolderDataset

__all__ = ["open_dataset"]

_LAYOUTS = (  # one line: the CLI prints errors in one
    "Fashion-MNIST (the name 'fashion-mnist', which reads "
    f"{DEFAULT_FASHION_MNIST_ROOT}, or a folder holding the four IDX files "
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte, each may end in .gz), or an image folder in torchvision "
    "ImageFolder layout (<folder>/train/<class>/*.jpg and <folder>/val/<class>/*.jpg)"
)


def open_dataset(
    path_or_name: str | os.PathLike, split: str = "train", **options
) -> ElasticImageDataset:
    """Open ``"fashion-mnist"``, a folder of Fashion-MNIST IDX files, or an image folder
    with ``train/`` and ``val/``.

    ``split`` is ``"train"``, or ``"val"``/``"test"`` for the evaluation split of either
    layout (Fashion-MNIST's ``test``, an image folder's ``val``). ``options`` go to the
    dataset's constructor (``augment``, ``resolution``, ``scale``...);
    ``max_unreadable_images`` only to an image folder's (Fashion-MNIST's images are read
    and checked whole when it opens).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    path = Path(path_or_name)
    in_memory = {k: v for k, v in options.items() if k != "max_unreadable_images"}
    if path.is_dir():
        names = {n for pair in FASHION_MNIST_FILES.values() for n in pair}
        if any((path / n).is_file() or (path / f"{n}.gz").is_file() for n in names):
            return FashionMNIST(path, "train" if split == "train" else "test", **in_memory)
        if (path / "train").is_dir() or (path / "val").is_dir():
            return ImageFolderDataset(path, "train" if split == "train" else "val", **options)
        problem = f"{path} holds neither Fashion-MNIST IDX files nor train/ and val/ folders"
    elif str(path_or_name).lower() in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        return FashionMNIST(split="train" if split == "train" else "test", **in_memory)
    else:
        problem = f"{path} is not a folder nor a known dataset name"
    raise DatasetNotFoundError(f"{problem}; accepted: {_LAYOUTS}")
