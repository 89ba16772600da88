"""Images in torchvision ImageFolder layout (``root/{train,val}/<class>/*.jpg``): ImageNet
and whatever users bring."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from torchvision.transforms import v2

from ..errors import FileFormatError
from .base import DatasetNotFoundError, ElasticImageDataset

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageFolderDataset"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


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
