"""Is data loading the bottleneck? The training loader alone against real training.

    python bench/data_loading.py                                    # fashion-mnist-quick
    python bench/data_loading.py --config imagenet --data /data/imagenet --steps 20
    python bench/data_loading.py --config imagenet --jpeg-proxy /tmp/fmnist-jpeg --steps 20

1. The training loader alone, built as training builds it (the config's batch size,
   resolutions and augmentation), with 0, 1, 2 and the config's number of workers:
   images/s over ``--steps`` batches after the first, and the wait for the first batch
   (worker start-up, paid once per epoch).
2. The config's first stage trained for ``--steps`` steps with the config's workers:
   images/s and the share of the time the training loop sat waiting for a batch
   (``data_wait_fraction``, which every run logs per 20 steps and per epoch).

The loader is not the bottleneck where (2)'s wait is a small share and (1) at the
config's workers runs well above (2)'s images/s. On a machine with few cores the loader
workers and training share them, so (1) measures what the loader could give with the
cores to itself.

``--jpeg-proxy DIR`` writes an ImageFolder tree of JPEGs (Fashion-MNIST images upscaled to
500x375, 300 per class for train/, 50 for val/) unless DIR exists, and reads it: a
stand-in for ImageNet decoding where no ImageNet is at hand. Real photographs decode
more slowly than these smooth upscaled ones, so run it on your own folder to size
``num_workers``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from onceforall.data import FashionMNIST, make_loader
from onceforall.training import Trainer, load_config


def write_jpeg_proxy(folder: Path, train_per_class: int = 300, val_per_class: int = 50) -> None:
    """An ImageFolder tree of 500x375 JPEGs made from Fashion-MNIST training images."""
    from PIL import Image

    source = FashionMNIST(split="train")
    wanted = {"train": train_per_class, "val": val_per_class}
    counts = {(split, c): 0 for split in wanted for c in range(len(source.classes))}
    for index in range(len(source)):
        label = int(source.targets[index])
        split = "train" if counts[("train", label)] < train_per_class else "val"
        if counts[(split, label)] >= wanted[split]:
            continue
        out = folder / split / f"class{label}"
        out.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(source.images[index].numpy()).convert("RGB")
        image.resize((500, 375), Image.BICUBIC).save(out / f"{index}.jpg", quality=90)
        counts[(split, label)] += 1
        if all(counts[key] >= wanted[key[0]] for key in counts):
            break


def loader_alone(config, train_set, workers: int, steps: int) -> tuple[float, float]:
    """(seconds to the first batch, images/s over the next ``steps`` batches)."""
    loader = make_loader(
        train_set,
        config.batch_size,
        config.resolutions,
        train=True,
        seed=config.seed,
        num_workers=workers,
    )
    loader.batch_sampler.set_epoch(0)
    start = time.perf_counter()
    batches = iter(loader)
    next(batches)
    first = time.perf_counter() - start
    start, images = time.perf_counter(), 0
    for _ in range(steps):
        images += len(next(batches)[1])
    return first, images / (time.perf_counter() - start)


def training(config, data: str, steps: int) -> dict:
    """The last training record of ``steps`` steps of the config's first stage."""
    with tempfile.TemporaryDirectory() as run:
        trainer = Trainer(config, data, run, progress=False, max_steps=steps)
        trainer.run(stages=[config.stages[0].name])
        records = [json.loads(line) for line in (Path(run) / "metrics.jsonl").open()]
    return [r for r in records if r["type"] == "train"][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="fashion-mnist-quick")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--steps", type=int, default=60, help="rounded up to a multiple of 20")
    parser.add_argument("--jpeg-proxy", type=Path, help="write (if missing) and read this folder")
    args = parser.parse_args()
    steps = -(-args.steps // 20) * 20  # training logs a record every 20 steps

    data = args.data
    config = load_config(args.config)
    if args.jpeg_proxy:
        if not args.jpeg_proxy.exists():
            print(f"writing the JPEG proxy to {args.jpeg_proxy} ...", flush=True)
            write_jpeg_proxy(args.jpeg_proxy)
        data = str(args.jpeg_proxy)
        # The proxy is small: keep most of it for training; validation is not timed here.
        config = replace(config, holdout_size=300, bn_recal_images=100)
    train_set = config.open_splits(data).train
    print(
        f"{args.config} on {data}: batch {config.batch_size}, resolutions "
        f"{config.resolutions[0]}..{config.resolutions[-1]}, {len(train_set)} training images"
    )

    print("\n(1) the training loader alone")
    print(f"{'workers':>7}  {'first batch s':>13}  {'images/s':>9}")
    alone = {}
    for workers in sorted({0, 1, 2, config.num_workers}):
        first, rate = loader_alone(config, train_set, workers, steps)
        alone[workers] = rate
        print(f"{workers:7d}  {first:13.2f}  {rate:9.0f}", flush=True)

    stage = config.stages[0]
    print(f"\n(2) training: stage {stage.name!r}, {steps} steps, {config.num_workers} workers")
    record = training(config, data, steps)
    trained, wait = record["images_per_s"], record["data_wait_fraction"]
    print(f"training images/s            {trained:9.0f}")
    print(f"time waiting for data         {100 * wait:8.1f} %")
    print(
        f"loader alone / training ({config.num_workers} workers) "
        f"{alone[config.num_workers] / trained:6.1f}x"
    )


if __name__ == "__main__":
    main()
