"""Training-step throughput of the other families, side by side with the authors'
package: OFA-ProxylessNAS w1.3 and OFA-ResNet50, ours against theirs; then the time of
the paper's evolutionary search (population 100, 500 generations, one MACs constraint
at mid-range, a fixed linear predictor) on each family.

    python bench/families.py                   # this 2-core CPU: batch 16, resolution 128
    python bench/families.py --steps 10 --rounds 3

A step is forward, cross-entropy backward and an SGD step on a random batch with 1000
classes, with a new random sub-network before each step; both implementations get the
same sequence of architectures (drawn from our space, handed to theirs as its own arch
dict). Rounds are interleaved; each figure is the best round. Ours also runs
channels_last, as our trainer does on CPU.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from train_step import train_throughput  # noqa: E402

import onceforall  # noqa: E402
from onceforall.search import evolutionary_search, macs_cost, parse_constraint  # noqa: E402


def _reference(name: str) -> torch.nn.Module:
    from ofa.imagenet_classification.elastic_nn.networks import (
        OFAProxylessNASNets,
        OFAResNets,
    )

    if name == "ofa_resnet50":
        return OFAResNets(
            n_classes=1000,
            dropout_rate=0,
            depth_list=[0, 1, 2],
            expand_ratio_list=[0.2, 0.25, 0.35],
            width_mult_list=[0.65, 0.8, 1.0],
        )
    return OFAProxylessNASNets(
        n_classes=1000,
        dropout_rate=0,
        width_mult=1.3,
        ks_list=[3, 5, 7],
        expand_ratio_list=[3, 4, 6],
        depth_list=[2, 3, 4],
    )


def _their_arch(arch) -> dict:
    """Our arch as their ``set_active_subnet`` keyword arguments."""
    data = arch.to_dict()
    data.pop("r")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
        f"resolution {args.resolution}, {args.steps} timed steps, best of {args.rounds} rounds"
    )
    print(f"{'supernet':<20} {'ours NCHW':>10} {'theirs':>8} {'ratio':>6} {'ours CL':>8}")
    for name in ("ofa_proxyless_w1.3", "ofa_resnet50"):
        torch.manual_seed(0)
        ours = onceforall.create_supernet(name, num_classes=1000, dropout=0.0)
        theirs = _reference(name)
        total = args.warmup + args.steps
        archs = [ours.space.sample(random.Random(i)) for i in range(total)]
        best = {"ours": 0.0, "theirs": 0.0, "ours_cl": 0.0}

        def set_theirs(step: int, net=theirs, archs=archs) -> None:
            net.set_active_subnet(**_their_arch(archs[step]))

        def set_ours(step: int, net=ours, archs=archs) -> None:
            net.set_active(archs[step])

        for _ in range(args.rounds):
            for key in best:
                model, before = (theirs, set_theirs) if key == "theirs" else (ours, set_ours)
                figure = train_throughput(
                    model,
                    before,
                    args.batch,
                    args.resolution,
                    args.steps,
                    args.warmup,
                    channels_last=key == "ours_cl",
                )
                if key == "ours_cl":
                    ours.to(memory_format=torch.contiguous_format)
                best[key] = max(best[key], figure)
        print(
            f"{name:<20} {best['ours']:>10.1f} {best['theirs']:>8.1f} "
            f"{best['ours'] / best['theirs']:>6.2f} {best['ours_cl']:>8.1f}   (images/s)"
        )

    print("search: population 100, 500 generations, macs <= mid-range")
    for name in ("ofa_mbv3_w1.0", "ofa_proxyless_w1.3", "ofa_resnet50"):
        net = onceforall.create_supernet(name, num_classes=1000)
        cost = macs_cost(net)
        limit = (cost.minimum()[0] + cost.maximum()[0]) / 2
        weights = np.random.default_rng(0).normal(size=net.space.encoding_size)

        def predict(features: np.ndarray, weights: np.ndarray = weights) -> np.ndarray:
            return features @ weights

        result = evolutionary_search(
            net.space, predict, [parse_constraint(f"macs<={limit:.6g}", [cost])]
        )
        print(
            f"{name:<20} {result.wall_time_s:6.2f} s  ({result.predicted} distinct networks "
            "priced and predicted)"
        )


if __name__ == "__main__":
    main()
