"""Images that do not decode in an image folder: skipped with a warning and replaced by
the next readable one (deterministically), up to ``max_unreadable_images``; ``--check-data``
decodes them all before a run and refuses, naming them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from onceforall.cli import main
from onceforall.data import (
    ElasticSubset,
    ImageFolderDataset,
    UnreadableImagesError,
    UnreadableImageWarning,
    make_loader,
    open_dataset,
    open_splits,
)
from onceforall.errors import ConfigError, FileFormatError
from onceforall.training import TrainConfig, train
from tests.conftest import needs_fashion_mnist

# A run of one short stage on a 16 + 6 image folder: 3 steps, seconds on a CPU.
RUN = {
    "supernet": "ofa_mbv3_w1.0",
    "resolutions": [24, 32],
    "eval_resolutions": [32],
    "batch_size": 4,
    "holdout_size": 4,
    "bn_recal_images": 4,
    "num_workers": 0,
    "num_random_val_archs": 0,
    "checkpoint_every_steps": 0,
    "stages": [{"name": "full", "epochs": 1, "lr": 0.05, "distill": False}],
}


def _folder(root, train=8, val=3):
    """Real JPEGs (random pixels, 32x32) in root/{train,val}/{cat,dog}/."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _garbage(path):
    path.write_text("this is not a JPEG")
    return path


def _same(a, b) -> bool:
    return torch.equal(a[0], b[0]) and a[1] == b[1]


def test_an_unreadable_image_is_replaced_by_the_next_readable_one(tmp_path) -> None:
    root = _folder(tmp_path, train=4)
    truncated = _truncate(root / "train" / "cat" / "1.jpg")  # index 1
    garbage = _garbage(root / "train" / "dog" / "3.jpg")  # index 7, the last
    data = ImageFolderDataset(root, "train", resolution=32)
    with pytest.warns(UnreadableImageWarning, match=str(truncated)) as caught:
        assert _same(data[1], data[2])  # the next index
    assert "OSError: image file is truncated" in str(caught[0].message)
    with pytest.warns(UnreadableImageWarning, match=str(garbage)):
        assert _same(data[7], data[0])  # cycling to the first
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per file: no second warning
        assert _same(data[(1, 24)], data[(2, 24)])
        assert _same(data.with_transform(resolution=24)[7], data[(0, 24)])
    assert sorted(data.unreadable) == [truncated, garbage]
    assert "UnidentifiedImageError" in data.unreadable[garbage]

    # A subset replaces within itself: a held-out image never stands in for a training one.
    train = ElasticSubset(data, [0, 1, 3, 7])
    assert _same(train[1], data[3]) and _same(train[3], data[0])
    assert _same(train[(1, 24)], data[(3, 24)])

    # The training loader reads on (one worker too), the same batches every time.
    def batches(workers: int) -> list[torch.Tensor]:
        torch.manual_seed(0)
        loader = make_loader(data, 2, (24, 32), train=True, seed=0, num_workers=workers)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnreadableImageWarning)
            return [images for images, _ in loader]

    first = batches(0)
    assert len(first) == 4 and all(torch.equal(a, b) for a, b in zip(first, batches(0)))
    assert len(batches(1)) == 4


@pytest.mark.parametrize("workers", [0, 1])
def test_past_the_limit_the_run_stops_naming_the_folder(tmp_path, workers) -> None:
    root = _folder(tmp_path, train=4)
    bad = [_garbage(root / "train" / "cat" / "1.jpg"), _truncate(root / "train" / "dog" / "2.jpg")]
    data = open_dataset(root, "train", resolution=32, max_unreadable_images=1)
    loader = make_loader(data, 8, 32, train=False, seed=0, num_workers=workers)
    with pytest.warns(UnreadableImageWarning) if workers == 0 else warnings.catch_warnings():
        with pytest.raises(UnreadableImagesError) as info:
            list(loader)
    message = str(info.value)
    assert isinstance(info.value, FileFormatError)
    assert message.startswith(f"2 images of {root / 'train'} do not decode")
    assert "more than max_unreadable_images (1)" in message and "--check-data" in message
    assert all(str(path) in message for path in bad)
    assert "\n" not in message  # from a loader worker too: the message, not a traceback

    strict = ImageFolderDataset(root, "train", max_unreadable_images=0)
    with pytest.raises(
        UnreadableImagesError, match=r"^1 image of .* does not decode .* \(0\) allows"
    ):
        strict[1]


def test_max_unreadable_images_is_checked_and_may_change_on_resume() -> None:
    from onceforall.training.run_dir import config_differences

    assert TrainConfig.from_dict(RUN).max_unreadable_images == 100
    for value in (-1, 1.5, True, "many"):
        with pytest.raises(ConfigError, match="max_unreadable_images must be an integer >= 0"):
            TrainConfig.from_dict({**RUN, "max_unreadable_images": value})
    stricter = TrainConfig.from_dict({**RUN, "max_unreadable_images": 0})
    assert config_differences(TrainConfig.from_dict(RUN), stricter) == []


def test_check_images_decodes_every_image_of_the_splits(tmp_path) -> None:
    root = _folder(tmp_path)
    config = TrainConfig.from_dict(RUN)
    assert config.check_images(root, progress=False) == (
        f"--check-data: all 22 images of {root} the run reads decode"
    )
    bad = _truncate(root / "val" / "dog" / "0.jpg")
    splits = open_splits(root, holdout_size=4, seed=0)
    with pytest.raises(
        UnreadableImagesError, match=r"^1 image of the 22 checked does not decode: "
    ):
        splits.check_images()
    # Under torchrun each worker decodes its share; the one holding the file names it.
    counts, found = [], []
    for rank in range(3):
        try:
            counts.append(splits.check_images(rank=rank, world_size=3))
        except UnreadableImagesError as error:
            assert f"(worker {rank}'s share of 3)" in str(error) and str(bad) in str(error)
            found.append(rank)
    assert len(found) == 1 and sum(counts) + len(range(found[0], 22, 3)) == 22


@needs_fashion_mnist
def test_check_images_of_fashion_mnist_has_nothing_to_decode() -> None:
    line = TrainConfig.from_dict(RUN).check_images("fashion-mnist", progress=False)
    assert "in memory" in line and "nothing to decode" in line


def _write_config(tmp_path) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(RUN))
    return str(path)


@pytest.mark.parametrize("command", ["train", "run"])
def test_check_data_refuses_before_training(tmp_path, capsys, command) -> None:
    root = _folder(tmp_path / "data")
    bad = _garbage(root / "train" / "dog" / "5.jpg")
    run = tmp_path / "run"
    args = [command, "--config", _write_config(tmp_path), "--data", str(root), "--out", str(run)]
    assert main([*args, "--check-data", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("ofa: 1 image of the 22 checked does not decode:") and str(bad) in err
    assert not run.exists()  # nothing trained, nothing written


def test_a_run_trains_through_an_unreadable_image(tmp_path) -> None:
    root = _folder(tmp_path / "data")
    bad = [_truncate(root / "train" / "cat" / "3.jpg"), _garbage(root / "val" / "dog" / "1.jpg")]
    with pytest.warns(UnreadableImageWarning) as caught:
        results = train(TrainConfig.from_dict(RUN), str(root), tmp_path / "run", progress=False)
    assert set(results["full"]) == {"smallest@32", "largest@32"}
    assert (tmp_path / "run" / "training_done.json").is_file()
    warned = [str(w.message) for w in caught if w.category is UnreadableImageWarning]
    assert all(any(str(path) in text for text in warned) for path in bad)
