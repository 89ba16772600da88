"""Per-arch measurement speed: eager PyTorch against ONNX Runtime, at equal images.

Each arch of a trained run is BN-recalibrated on the run's ``bn_recal_images`` held-out
images and evaluated on ``--eval-images`` images of the dataset's whole test split (not
only the run's ``test_subset``), once by each runtime, the two
alternating arch by arch so that a busy machine slows both alike. Prints seconds per arch,
archs per minute and the ratio for each number of evaluation images, and the largest
difference between the two runtimes' top-1 (they compute the same measurement).

    OMP_NUM_THREADS=1 .venv/bin/python bench/eval_speed.py --run runs/fm-long \\
        --archs 10 --eval-images 1500 10000
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import time

import torch

from onceforall.data import subset_for_budget
from onceforall.evaluation import SubnetEvaluator
from onceforall.training.run_dir import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--archs", type=int, default=10)
    parser.add_argument("--eval-images", type=int, nargs="+", default=[1500, 10000])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config, net = load_run(args.run)
    splits = config.open_splits(args.data)
    rng = random.Random(args.seed)
    resolutions = config.resolutions
    archs = [
        dataclasses.replace(net.space.sample(rng), r=rng.choice(resolutions))
        for _ in range(args.archs)
    ]
    print(
        f"{args.run}: {args.archs} archs at {list(resolutions)} px, "
        f"{config.bn_recal_images} calibration images, {torch.get_num_threads()} thread(s)"
    )
    pool = getattr(splits.test, "dataset", splits.test)  # the whole test split, not the run's
    for images in args.eval_images:
        test = subset_for_budget(pool, min(images, len(pool)), args.seed)
        evaluators = {
            runtime: SubnetEvaluator(
                splits.holdout,
                test,
                calibration_images=config.bn_recal_images,
                num_workers=0,
                seed=config.seed,
                runtime=runtime,
                cache_bytes=2**31,
            )
            for runtime in ("torch", "onnxruntime")
        }
        for evaluator in evaluators.values():  # decode and cache the images once, untimed
            for r in resolutions:
                for split in ("calibration", "test"):
                    evaluator.batches(split, r)
        seconds: dict[str, list[float]] = {name: [] for name in evaluators}
        top1: dict[str, list[float]] = {name: [] for name in evaluators}
        for i, arch in enumerate(archs):
            order = list(evaluators) if i % 2 == 0 else list(evaluators)[::-1]
            for name in order:
                start = time.perf_counter()
                top1[name].append(evaluators[name].evaluate_arch(net, arch))
                seconds[name].append(time.perf_counter() - start)
        eager, fast = (statistics.mean(seconds[n]) for n in ("torch", "onnxruntime"))
        worst = max(abs(a - b) for a, b in zip(top1["torch"], top1["onnxruntime"]))
        print(
            f"{len(test):>6} eval images: torch {eager:.2f} s/arch ({60 / eager:.1f} archs/min), "
            f"onnxruntime {fast:.2f} s/arch ({60 / fast:.1f} archs/min), "
            f"ratio {eager / fast:.2f}x; largest top-1 difference {worst:.3f} point"
        )


if __name__ == "__main__":
    main()
