"""Data for training and evaluation: datasets (Fashion-MNIST IDX files, ImageNet-style
folders) and loaders (elastic-resolution batches, held-out split)."""

from .datasets import (
    DEFAULT_FASHION_MNIST_ROOT,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetNotFoundError,
    ElasticImageDataset,
    ElasticSubset,
    FashionMNIST,
    ImageFolderDataset,
    open_dataset,
    read_idx,
)
from .loaders import ElasticResolutionBatchSampler, make_loader, split_holdout, subset_for_budget

__all__ = [
    "DEFAULT_FASHION_MNIST_ROOT",
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
    "make_loader",
    "open_dataset",
    "read_idx",
    "split_holdout",
    "subset_for_budget",
]
