"""Data for training and evaluation: datasets (Fashion-MNIST IDX files, ImageNet-style
folders) and loaders (elastic-resolution batches, held-out split)."""

from .base import (
    DatasetNotFoundError,
    ElasticImageDataset,
    ElasticSubset,
    UnreadableImagesError,
    UnreadableImageWarning,
)
from .datasets import open_dataset
from .fashion_mnist import (
    DEFAULT_FASHION_MNIST_ROOT,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    FashionMNIST,
    read_idx,
)
from .image_folder import (
    DEFAULT_MAX_UNREADABLE_IMAGES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolderDataset,
    find_unreadable_images,
)
from .loaders import (
    ElasticResolutionBatchSampler,
    Splits,
    make_loader,
    open_splits,
    split_holdout,
    subset_for_budget,
)

__all__ = [
    "DEFAULT_FASHION_MNIST_ROOT",
    "DEFAULT_MAX_UNREADABLE_IMAGES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DatasetNotFoundError",
    "ElasticImageDataset",
    "ElasticResolutionBatchSampler",
    "ElasticSubset",
    "FashionMNIST",
    "ImageFolderDataset",
    "Splits",
    "UnreadableImageWarning",
    "UnreadableImagesError",
    "find_unreadable_images",
    "make_loader",
    "open_dataset",
    "open_splits",
    "read_idx",
    "split_holdout",
    "subset_for_budget",
]
