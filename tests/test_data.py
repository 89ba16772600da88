"""Datasets and elastic-resolution loaders, on the real Fashion-MNIST files and on small
JPEG folders written here."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler, Subset

from onceforall.data import (
    DEFAULT_FASHION_MNIST_ROOT,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    DatasetNotFoundError,
    ElasticResolutionBatchSampler,
    ElasticSubset,
    FashionMNIST,
    ImageFolderDataset,
    make_loader,
    open_dataset,
    read_idx,
    split_holdout,
    subset_for_budget,
)

ROOT = DEFAULT_FASHION_MNIST_ROOT
RESOLUTIONS = (24, 28, 32, 36, 40)
LOW = (0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD  # normalised black
HIGH = (1 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD  # normalised white


def _load(split: str) -> FashionMNIST:
    try:
        return FashionMNIST(ROOT, split)
    except DatasetNotFoundError as error:  # `make test` installs it where apt is usable
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def train_set() -> FashionMNIST:
    return _load("train")


@pytest.fixture(scope="module")
def test_set() -> FashionMNIST:
    return _load("test")


# ----------------------------------------------------------------------------- IDX reader


def test_read_idx_real_files(train_set: FashionMNIST) -> None:
    images = read_idx(ROOT / "train-images-idx3-ubyte.gz")
    labels = read_idx(ROOT / "train-labels-idx1-ubyte.gz")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [6000] * 10
    assert 0 < images.mean() < 255 and images.max() == 255 and images.min() == 0
    test_labels = read_idx(ROOT / "t10k-labels-idx1-ubyte.gz")
    assert read_idx(ROOT / "t10k-images-idx3-ubyte.gz").shape == (10000, 28, 28)
    assert np.bincount(test_labels).tolist() == [1000] * 10


def test_read_idx_uncompressed_and_wider_types(tmp_path) -> None:
    plain = tmp_path / "labels"
    plain.write_bytes(gzip.decompress((ROOT / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    np.testing.assert_array_equal(read_idx(plain), read_idx(ROOT / "t10k-labels-idx1-ubyte.gz"))
    values = np.arange(-6, 6, dtype=">i4").reshape(3, 4)
    wide = tmp_path / "wide.idx"
    wide.write_bytes(bytes([0, 0, 0x0C, 2]) + (3).to_bytes(4, "big") + (4).to_bytes(4, "big"))
    with wide.open("ab") as f:
        f.write(values.tobytes())
    result = read_idx(wide)
    assert result.dtype == np.int32 and result.dtype.isnative
    np.testing.assert_array_equal(result, values)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x00", "too short"),
        (b"garbage that is not an IDX file at all", "not an IDX file"),
        (bytes([0, 0, 8, 3, 0, 0]), "truncated IDX header"),
        (bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(9), "truncated"),
        (bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(11), "trailing bytes"),
    ],
)
def test_read_idx_malformed_names_file(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_truncated_real_file(tmp_path) -> None:
    raw = gzip.decompress((ROOT / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "cut").write_bytes(raw[:50000])
    with pytest.raises(ValueError, match=r"truncated.*\(10000, 28, 28\)") as info:
        read_idx(tmp_path / "cut")
    assert str(tmp_path / "cut") in str(info.value)
    packed = (ROOT / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ValueError, match="gzip") as info:
        read_idx(tmp_path / "cut.gz")
    assert str(tmp_path / "cut.gz") in str(info.value)


# ----------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_dataset(train_set: FashionMNIST, test_set: FashionMNIST) -> None:
    assert len(train_set) == 60000 and len(test_set) == 10000
    assert train_set.images.shape == (60000, 28, 28) and train_set.images.dtype == torch.uint8
    assert train_set.classes[0] == "T-shirt/top" and train_set.classes[9] == "Ankle boot"
    assert torch.bincount(train_set.targets).tolist() == [6000] * 10
    image, label = test_set[7]
    assert image.shape == (3, 28, 28) and image.dtype == torch.float32
    assert label == int(test_set.targets[7])
    expected = (test_set.images[7].float() / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    for channel in image:
        torch.testing.assert_close(channel, expected)
    big, _ = test_set[(7, 36)]
    assert big.shape == (3, 36, 36)
    assert test_set.with_transform(resolution=32)[7][0].shape == (3, 32, 32)
    assert test_set.with_transform(resolution=32).images is test_set.images  # shared


def test_fashion_mnist_uncompressed_folder(tmp_path, test_set: FashionMNIST) -> None:
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(ROOT / f"{name}.gz") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    plain = open_dataset(tmp_path, "test")
    assert isinstance(plain, FashionMNIST)
    assert torch.equal(plain.images, test_set.images)
    assert torch.equal(plain.targets, test_set.targets)
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte"):
        open_dataset(tmp_path, "train")  # only the test split is there


def test_missing_fashion_mnist_says_where_and_how(tmp_path) -> None:
    folder = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        FashionMNIST(folder, "train")
    assert isinstance(info.value, DatasetNotFoundError)
    message = str(info.value)
    for part in (
        str(folder),
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "apt-get install dataset-fashion-mnist",
        "--data",
    ):
        assert part in message


def test_augmented_items_are_random_and_bounded(test_set: FashionMNIST) -> None:
    augmented = test_set.with_transform(augment=True)
    torch.manual_seed(0)
    first = augmented[(3, 32)][0]
    second = augmented[(3, 32)][0]
    assert first.shape == second.shape == (3, 32, 32)
    assert not torch.equal(first, second)
    assert LOW - 1e-5 <= first.min() and first.max() <= HIGH + 1e-5


# ----------------------------------------------------------------------------- batch sampler


def test_batch_sampler_same_resolutions_across_ranks_disjoint_indices() -> None:
    data = range(1000)
    samplers = [
        ElasticResolutionBatchSampler(
            DistributedSampler(data, num_replicas=2, rank=rank, seed=5), 16, RESOLUTIONS, seed=3
        )
        for rank in (0, 1)
    ]
    batches = [list(s) for s in samplers]
    assert len(batches[0]) == len(samplers[0]) == 500 // 16
    resolutions = [[{r for _, r in batch} for batch in rank] for rank in batches]
    assert all(len(rs) == 1 for rs in resolutions[0] + resolutions[1])  # one per batch
    assert resolutions[0] == resolutions[1]
    assert {r for (r,) in resolutions[0]} == set(RESOLUTIONS)  # 31 draws from 5: all seen
    indices = [{i for batch in rank for i, _ in batch} for rank in batches]
    assert len(indices[0]) == len(indices[1]) == 31 * 16
    assert not indices[0] & indices[1]
    sequence = [rs.pop() for rs in resolutions[0]]
    assert sequence == [samplers[0].resolution_at(0, k) for k in range(len(sequence))]

    for sampler in samplers:
        sampler.set_epoch(1)
    assert samplers[0].sampler.epoch == 1  # forwarded
    epoch1 = [[batch[0][1] for batch in s] for s in samplers]
    assert epoch1[0] == epoch1[1] != sequence
    again = ElasticResolutionBatchSampler(range(1000), 16, RESOLUTIONS, seed=3)
    again.set_epoch(1)  # a plain sequence has no set_epoch; fine
    assert [batch[0][1] for batch in again][:31] == epoch1[0]  # same (seed, epoch, k)
    other_seed = ElasticResolutionBatchSampler(range(1000), 16, RESOLUTIONS, seed=4)
    assert [batch[0][1] for batch in other_seed] != sequence


def test_batch_sampler_drop_last() -> None:
    kept = ElasticResolutionBatchSampler(range(10), 4, [8], seed=0, drop_last=False)
    assert len(kept) == 3 and [len(b) for b in kept] == [4, 4, 2]
    dropped = ElasticResolutionBatchSampler(range(10), 4, [8], seed=0)
    assert len(dropped) == 2 and [len(b) for b in dropped] == [4, 4]
    assert [i for batch in dropped for i, _ in batch] == list(range(8))


# ----------------------------------------------------------------------------- loaders


def test_training_loader_batches(train_set: FashionMNIST) -> None:
    small = subset_for_budget(train_set, 640, seed=0)
    loader = make_loader(small, 64, RESOLUTIONS, train=True, seed=1, num_workers=0)
    assert len(loader) == 10
    labels, seen = [], set()
    for images, targets in loader:
        resolution = images.shape[-1]
        assert images.shape == (64, 3, resolution, resolution) and resolution in RESOLUTIONS
        assert images.dtype == torch.float32 and targets.dtype == torch.int64
        assert LOW - 1e-5 <= images.min() and images.max() <= HIGH + 1e-5
        assert torch.equal(images[:, 0], images[:, 2])  # grey replicated
        assert 0.7 < images.std() < 1.3
        labels.append(targets)
        seen.add(resolution)
    assert len(seen) > 1
    assert torch.equal(torch.cat(labels).sort().values, small.targets.sort().values)
    loader.batch_sampler.set_epoch(1)
    assert not torch.equal(torch.cat([t for _, t in loader]), torch.cat(labels))


def test_eval_loader_in_order_at_largest_resolution(test_set: FashionMNIST) -> None:
    loader = make_loader(test_set, 500, RESOLUTIONS, train=False, seed=0, num_workers=0)
    assert len(loader) == 20
    images, targets = next(iter(loader))
    assert images.shape == (500, 3, 40, 40)
    assert torch.equal(targets, test_set.targets[:500])
    fixed = make_loader(test_set, 500, 28, train=False, seed=0, num_workers=0)
    images, _ = next(iter(fixed))
    expected = (test_set.images[:500].float() / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    torch.testing.assert_close(images[:, 1], expected)
    everything = torch.cat([x for x, _ in fixed])  # the whole test set: mean 0, std 1
    assert abs(everything.mean().item()) < 0.01 and abs(everything.std().item() - 1) < 0.01


def test_loader_with_two_workers(test_set: FashionMNIST, train_set: FashionMNIST) -> None:
    part = subset_for_budget(test_set, 300, seed=2)
    serial = [x for x, _ in make_loader(part, 64, 32, train=False, seed=0, num_workers=0)]
    loader = make_loader(part, 64, 32, train=False, seed=0, num_workers=2)
    assert loader.persistent_workers
    for _ in range(2):  # the persistent workers serve a second epoch
        parallel = [x for x, _ in loader]
        assert len(parallel) == 5
        for a, b in zip(serial, parallel):
            assert torch.equal(a, b)
    small = subset_for_budget(train_set, 256, seed=0)
    training = make_loader(small, 32, RESOLUTIONS, train=True, seed=0, num_workers=2)
    shapes = [x.shape[-1] for x, _ in training]
    expected = [training.batch_sampler.resolution_at(0, k) for k in range(8)]
    assert shapes == expected


def test_distributed_training_loaders_split_the_data(test_set: FashionMNIST) -> None:
    part = subset_for_budget(test_set, 256, seed=0)
    loaders = [
        make_loader(
            part,
            32,
            RESOLUTIONS,
            train=True,
            seed=9,
            num_workers=0,
            distributed=True,
            rank=rank,
            world_size=2,
        )
        for rank in (0, 1)
    ]
    samplers = [loader.batch_sampler for loader in loaders]
    batches = [list(s) for s in samplers]
    assert [b[0][1] for b in batches[0]] == [b[0][1] for b in batches[1]]
    flat = [[i for batch in rank for i, _ in batch] for rank in batches]
    assert sorted(flat[0] + flat[1]) == list(range(256))
    with pytest.raises(ValueError, match="distributed=True"):
        make_loader(part, 32, RESOLUTIONS, train=True, seed=0, rank=1, world_size=2)
    with pytest.raises(ValueError, match="no full batch"):
        make_loader(part, 512, RESOLUTIONS, train=True, seed=0, num_workers=0)


# ----------------------------------------------------------------------------- subsets


def test_split_holdout(train_set: FashionMNIST) -> None:
    train, holdout = split_holdout(train_set, 10000, seed=0)
    assert isinstance(train, Subset) and isinstance(holdout, ElasticSubset)
    assert len(train) == 50000 and len(holdout) == 10000
    assert not set(train.indices) & set(holdout.indices)
    assert sorted(train.indices + holdout.indices) == list(range(60000))
    assert split_holdout(train_set, 10000, seed=0)[1].indices == holdout.indices
    assert split_holdout(train_set, 10000, seed=1)[1].indices != holdout.indices
    counts = torch.bincount(holdout.targets, minlength=10)
    assert counts.min() > 900 and counts.max() < 1100  # a random, roughly balanced draw
    first = holdout.indices[0]
    assert holdout[(0, 24)][0].shape == (3, 24, 24) and holdout[0][1] == train_set[first][1]
    for size in (0, 60000, 70000):
        with pytest.raises(ValueError, match="holdout size"):
            split_holdout(train_set, size, seed=0)


def test_subset_for_budget(test_set: FashionMNIST) -> None:
    small = subset_for_budget(test_set, 100, seed=0)
    assert len(small) == 100 and len(set(small.indices)) == 100
    assert small.indices == sorted(small.indices)
    assert subset_for_budget(test_set, 100, seed=0).indices == small.indices
    assert subset_for_budget(test_set, 100, seed=1).indices != small.indices
    assert len(subset_for_budget(test_set, 10**6, seed=0)) == 10000
    nested = subset_for_budget(small, 10, seed=0)  # subsets of subsets keep pairs working
    assert nested[(0, 30)][0].shape == (3, 30, 30)
    plain = Subset(test_set, [5, 6, 7])  # a plain torch Subset is accepted by make_loader
    images, _ = next(iter(make_loader(plain, 3, 24, train=False, seed=0, num_workers=0)))
    assert images.shape == (3, 3, 24, 24)


# ----------------------------------------------------------------------------- image folders


def _write_folder(root, classes=("cat", "dog"), splits=("train", "val"), count=3) -> None:
    rng = np.random.default_rng(0)
    for split in splits:
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                size = (40 + 8 * i, 30 + 4 * label)
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                mode = "L" if i == 2 else "RGB"  # a grey JPEG too: converted to RGB
                Image.fromarray(pixels).convert(mode).save(folder / f"{i}.jpg", quality=90)


def test_image_folder_dataset(tmp_path) -> None:
    _write_folder(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    train = open_dataset(tmp_path, "train", resolution=32)
    assert isinstance(train, ImageFolderDataset)
    assert train.classes == ["cat", "dog"] and len(train) == 6
    assert train.targets.tolist() == [0, 0, 0, 1, 1, 1]
    image, label = train[2]
    assert image.shape == (3, 32, 32) and label == 0 and image.dtype == torch.float32
    assert image.abs().max() < 3  # ImageNet-normalised: within about +-2.7
    val = ImageFolderDataset(tmp_path, "val")
    assert val.classes == train.classes and val[(5, 48)][0].shape == (3, 48, 48)
    assert open_dataset(tmp_path, "test").split == "val"
    loader = make_loader(train, 2, (24, 32), train=True, seed=0, num_workers=0)
    for images, targets in loader:
        assert (
            images.shape[0] == 2 and images.shape[-1] in (24, 32) and targets.dtype == torch.int64
        )
    for images, _ in make_loader(val, 4, (24, 32), train=False, seed=0, num_workers=0):
        assert images.shape[1:] == (3, 32, 32)


def test_image_folder_errors(tmp_path) -> None:
    _write_folder(tmp_path / "mismatch", splits=("train",))
    _write_folder(tmp_path / "mismatch", classes=("cat",), splits=("val",))
    for split in ("train", "val"):
        with pytest.raises(ValueError, match=r"only in train/: \['dog'\]") as info:
            ImageFolderDataset(tmp_path / "mismatch", split)
        assert str(tmp_path / "mismatch") in str(info.value)

    _write_folder(tmp_path / "noval", splits=("train",))
    assert len(ImageFolderDataset(tmp_path / "noval", "train")) == 6
    with pytest.raises(DatasetNotFoundError, match="train/<class>/") as info:
        ImageFolderDataset(tmp_path / "noval", "val")
    assert str(tmp_path / "noval" / "val") in str(info.value)

    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no class folders"):
        ImageFolderDataset(tmp_path / "empty", "train")
    _write_folder(tmp_path / "hollow")
    for path in (tmp_path / "hollow" / "val" / "dog").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match="holds no images") as info:
        ImageFolderDataset(tmp_path / "hollow", "val")
    assert str(tmp_path / "hollow" / "val" / "dog") in str(info.value)


def test_open_dataset_unknown_layout_describes_both(tmp_path) -> None:
    (tmp_path / "stuff").mkdir()
    for target in (tmp_path / "stuff", tmp_path / "absent", "imagenet-please"):
        with pytest.raises(DatasetNotFoundError) as info:
            open_dataset(target, "train")
        message = str(info.value)
        assert str(target) in message
        assert "t10k-images-idx3-ubyte" in message and "train/<class>/*.jpg" in message
    with pytest.raises(ValueError, match="split"):
        open_dataset(tmp_path, "validation")


def test_open_dataset_by_name(test_set: FashionMNIST) -> None:
    opened = open_dataset("fashion-mnist", "val", resolution=32)
    assert isinstance(opened, FashionMNIST) and opened.split == "test"
    assert len(opened) == len(test_set) and opened[0][0].shape == (3, 32, 32)
