"""Images in torchvision ImageFolder layout (``root/{train,val}/<class>/*.jpg``): ImageNet
and whatever users bring.

An image that does not decode (a truncated or corrupt file, text named ``x.jpg``) does not
stop a run: it is skipped with an :class:`~.base.UnreadableImageWarning` naming it, the
next readable image serving in its place (see :mod:`.base`), up to
``max_unreadable_images`` of them; one more raises :class:`~.base.UnreadableImagesError`.
The count is kept by each process that reads images (the main process, each data-loader
worker), as the warning is given once per file by each. :func:`find_unreadable_images`
decodes every image beforehand (``ofa train --check-data``).
"""

from __future__ import annotations

import os
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, NoReturn, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2
from tqdm.auto import tqdm

from ..errors import FileFormatError
from .base import (
    DatasetNotFoundError,
    ElasticImageDataset,
    SkipImage,
    UnreadableImagesError,
    UnreadableImageWarning,
)

__all__ = [
    "DEFAULT_MAX_UNREADABLE_IMAGES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolderDataset",
    "decode_image",
    "describe_unreadable",
    "find_unreadable_images",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_MAX_UNREADABLE_IMAGES = 100
# What PIL raises for a file that does not decode: an unknown format (UnidentifiedImageError,
# an OSError), a truncated file (OSError), a broken PNG (SyntaxError), bad headers
# (ValueError, EOFError, struct.error), an absurd size (DecompressionBombError).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)


def decode_image(path: str | os.PathLike) -> Image.Image:
    """The image at ``path``, decoded whole, as RGB."""
    with Image.open(path) as image:
        return image.convert("RGB")


def _why(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _images_do_not_decode(count: int, where: str) -> str:
    """``1 image WHERE does not decode`` or ``N images WHERE do not decode``."""
    if count == 1:
        return f"1 image {where} does not decode"
    return f"{count} images {where} do not decode"


def describe_unreadable(bad: Sequence[tuple[Path, str]], shown: int = 3) -> str:
    """The first ``shown`` of ``(path, error)`` pairs, and how many more there are."""
    listed = "; ".join(f"{path} ({why})" for path, why in bad[:shown])
    return listed + (f"; and {len(bad) - shown} more" if len(bad) > shown else "")


def find_unreadable_images(
    paths: Sequence[Path], *, progress: bool = False, threads: int | None = None
) -> list[tuple[Path, str]]:
    """Decode every image of ``paths`` (in ``threads`` threads, default one per CPU: PIL
    decodes outside the GIL); return ``(path, error)`` for each that fails, in order.
    ``progress`` shows a bar on a terminal."""

    def attempt(path: Path) -> tuple[Path, str] | None:
        try:
            decode_image(path)
        except _DECODE_ERRORS as error:
            return path, _why(error)
        return None

    bad: list[tuple[Path, str]] = []
    bar = tqdm(
        total=len(paths),
        desc="checking images",
        unit="img",
        disable=None if progress else True,  # None: a bar on a terminal only
        dynamic_ncols=True,
    )
    with bar, ThreadPoolExecutor(threads or min(32, os.cpu_count() or 1)) as pool:
        for start in range(0, len(paths), 1024):  # a bounded number of pending futures
            chunk = paths[start : start + 1024]
            bad += [found for found in pool.map(attempt, chunk) if found is not None]
            bar.update(len(chunk))
    return bad


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

    An image that does not decode is skipped, with a warning naming it, and the next
    readable one serves in its place; past ``max_unreadable_images`` such files (counted
    per process: the main one, each loader worker) :class:`UnreadableImagesError` stops
    the run, suggesting ``--check-data``. :attr:`unreadable` lists those met so far.
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
        max_unreadable_images: int = DEFAULT_MAX_UNREADABLE_IMAGES,
    ) -> None:
        super().__init__(augment=augment, resolution=resolution, scale=scale)
        if split not in ("train", "val"):
            raise ValueError(f"image-folder split must be 'train' or 'val', got {split!r}")
        self.root = Path(root)
        self.split = split
        self.color_jitter = color_jitter
        self.max_unreadable_images = max_unreadable_images
        # Shared with the copies with_transform makes; each loader worker has its own.
        self._unreadable: dict[Path, str] = {}
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
            raise FileFormatError(
                f"train/ and val/ of {self.root} name different classes: only in "
                f"{split}/: {sorted(set(self.classes) - theirs)}, only in {other.name}/: "
                f"{sorted(theirs - set(self.classes))}; both need one folder per class"
            )
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            files = _image_files(folder / name)
            if not files:
                raise FileFormatError(
                    f"class folder {folder / name} holds no images (extensions: "
                    f"{', '.join(_IMAGE_EXTENSIONS)}); every class needs images in each split"
                )
            self.samples += [(path, label) for path in files]
        self.targets = torch.tensor([label for _, label in self.samples], dtype=torch.long)

    @property
    def unreadable(self) -> dict[Path, str]:
        """The images of this split this process found not to decode (path: error)."""
        return dict(self._unreadable)

    def image_paths(self) -> list[Path]:
        return [path for path, _ in self.samples]

    def _raw(self, index: int) -> Image.Image:
        path = self.samples[index][0]
        if path in self._unreadable:
            raise SkipImage(path)
        try:
            return decode_image(path)
        except _DECODE_ERRORS as error:
            self._skip(path, error)

    def _skip(self, path: Path, error: BaseException) -> NoReturn:
        """Note an image that does not decode: warn, or past the limit, refuse."""
        self._unreadable[path] = _why(error)
        count, limit = len(self._unreadable), self.max_unreadable_images
        if count > limit:
            raise UnreadableImagesError(
                f"{_images_do_not_decode(count, f'of {self.root / self.split}')} (counted "
                f"in this process), more than max_unreadable_images ({limit}) allows: "
                f"{describe_unreadable(list(self._unreadable.items()))}. Find them all "
                "before training with --check-data (ofa train, ofa run), then repair or "
                "remove them, or raise the limit (--set max_unreadable_images=N)"
            ) from None
        warnings.warn(
            f"{path} does not decode ({self._unreadable[path]}): skipped, the next "
            f"readable image serves in its place ({count} of at most {limit} "
            "unreadable images met in this process; --check-data finds them all)",
            UnreadableImageWarning,
            stacklevel=2,
        )
        raise SkipImage(path) from None

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
