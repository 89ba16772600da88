"""How the supernet's initialisation changes what a short full stage learns.

    python bench/init_probe.py                  # 4 variants, 0.4 epoch each (~2 min each here)
    python bench/init_probe.py --epochs 1.0 --variants pytorch+zero
    python bench/init_probe.py --variants pytorch pytorch+zero --seeds 1 2

Each variant trains the full network (the first stage of the ``fashion-mnist-quick``
preset, shortened to ``--epochs``) from the same seed, then reports test top-1 of the
full network on the whole Fashion-MNIST test set at the preset's evaluation resolutions,
after BN recalibration on 2,000 held-out training images. Variants:

- ``pytorch``: PyTorch's default initialisation of every layer;
- ``he_fout``: the authors' scheme (normal, std sqrt(2 / (k * k * out_channels)) for every
  conv, depthwise ones included; BN scale 1, shift 0; linear uniform +-1/sqrt(in));
- ``+zero``: then the last BN scale of every residual branch that adds onto an identity
  shortcut set to zero (``Supernet.zero_init_residual``, what training does by default).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import replace

import torch
from torch import nn

from onceforall.nn.elastic_mbconv import ElasticDepthwiseConv2d
from onceforall.training import Trainer, load_config

VARIANTS = ("pytorch", "pytorch+zero", "he_fout", "he_fout+zero")


@torch.no_grad()
def init_he_fout(net: nn.Module) -> None:
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, ElasticDepthwiseConv2d)):
            k = module.weight.shape[-1]
            fan_out = k * k * module.weight.shape[0]
            module.weight.normal_(0, math.sqrt(2.0 / fan_out))
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Linear):
            bound = 1.0 / math.sqrt(module.weight.shape[1])
            module.weight.uniform_(-bound, bound)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.fill_(1.0)
            module.bias.zero_()


def probe(variant: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    config = load_config(
        args.config, test_subset=None, bn_recal_images=2000, zero_init_residual=False, seed=seed
    )
    full = replace(config.stages[0], epochs=args.epochs, lr=args.lr or config.stages[0].lr)
    config = replace(config, stages=[full])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, args.data, run_dir, progress=False)
        if variant.startswith("he_fout"):
            init_he_fout(trainer.net)
        if variant.endswith("+zero"):
            trainer.net.zero_init_residual()
        trainer.run()
        return trainer.last_test_top1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="fashion-mnist-quick")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--epochs", type=float, default=0.4)
    parser.add_argument("--lr", type=float, default=None, help="default: the preset's")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="run seeds (init, data)")
    args = parser.parse_args()
    print(f"full stage, {args.epochs} epoch; test top-1 (%) on the whole test set")
    for seed, variant in [(seed, variant) for seed in args.seeds for variant in args.variants]:
        start = time.perf_counter()
        validation = probe(variant, seed, args)
        accs = "  ".join(
            f"@{key.split('@')[1]} {value:.2f}"
            for key, value in validation.items()
            if key.startswith("largest")
        )
        elapsed = time.perf_counter() - start
        print(f"seed {seed}  {variant:14s} {accs}   ({elapsed:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
