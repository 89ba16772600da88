"""Test top-1 of a trained run's smallest and largest sub-networks on the whole test split.

    python bench/run_accuracy.py runs/demo                    # the supernet after all stages
    python bench/run_accuracy.py runs/demo --weights teacher  # the full network

Each sub-network is evaluated at each resolution after BN recalibration on a random
sample of held-out training images (the run's own held-out split, never trained on), by
the same ``SubnetEvaluator`` that validates during training. The preset's
validation reports on a 2,000-image test subset; this is the figure to quote.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from onceforall.evaluation import SubnetEvaluator
from onceforall.training import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--weights", default="supernet", choices=["supernet", "teacher"])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[24, 28, 32])
    parser.add_argument("--calibration-images", type=int, default=2000)
    args = parser.parse_args()

    config, net = load_run(args.run, args.weights)
    splits = replace(config, test_subset=None).open_splits(args.data)  # the whole test split
    holdout, test = splits.holdout, splits.test
    archs = {"smallest": net.space.smallest(), "largest": net.space.largest()}
    if args.weights == "teacher":
        archs.pop("smallest")  # only the full network was trained
    print(
        f"{args.run} ({args.weights}): test top-1 (%) on {len(test)} images, BN recalibrated "
        f"on {args.calibration_images} held-out images"
    )
    evaluator = SubnetEvaluator(  # what validation during training uses
        holdout,
        test,
        calibration_images=args.calibration_images,
        batch_size=500,
        num_workers=config.num_workers,
        seed=config.seed,
        memory_format=torch.channels_last if config.channels_last else torch.contiguous_format,
    )
    for resolution in args.resolutions:
        top1 = evaluator.run(net, archs, [resolution])
        for name in archs:
            print(f"{name:9s} @{resolution}  {top1[f'{name}@{resolution}']:.2f}", flush=True)


if __name__ == "__main__":
    main()
