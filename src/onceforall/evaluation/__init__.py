"""Batch-norm recalibration and evaluation of sub-networks.

A sub-network's BN running statistics are not those of the supernet (which averages over
many sub-networks). Before a sub-network is evaluated or exported its statistics are
re-estimated: reset, then a cumulative average (momentum ``None``) over ~2,000 training
images run through it in train mode (SPEC section 2).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .. import data as datamod
from ..arch import ArchInput, ArchValue
from ..models import Supernet

__all__ = ["RUNTIMES", "SubnetEvaluator", "evaluate", "recalibrate_bn", "score_logits"]

RUNTIMES = ("torch", "onnxruntime")  # what SubnetEvaluator can measure sub-networks with


def _images(batch: object) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch  # type: ignore[index]


@torch.no_grad()
def recalibrate_bn(
    net: nn.Module,
    arch: ArchInput | None,
    loader: Iterable,
    n_images: int = 2000,
    *,
    device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
) -> nn.Module:
    """Re-estimate the BN statistics of ``arch``.

    With a supernet, the sub-network is extracted first and the supernet is left
    untouched; the recalibrated extracted network is returned. With an ordinary network
    (``arch`` None) its own statistics are recalibrated in place and it is returned.
    ``loader`` yields ``(images, labels)`` at the resolution to calibrate for.
    """
    if isinstance(net, Supernet):
        if arch is None:
            raise ValueError("recalibrating a supernet needs the arch to extract")
        net = net.extract(arch)
    net = net.to(device)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    was_training = net.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches seen
    net.train()
    seen = 0
    for batch in loader:
        images = _images(batch).to(device, memory_format=memory_format)
        take = min(len(images), n_images - seen)
        if take <= 0:
            break
        net(images[:take])
        seen += take
    if seen == 0:
        raise ValueError("BN recalibration got no images from the loader")
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    net.train(was_training)
    return net


@torch.no_grad()
def evaluate(
    net: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
) -> dict[str, float]:
    """Top-1 accuracy (percent) and mean cross-entropy of ``net`` in eval mode."""
    net = net.to(device).eval()
    return score_logits(
        (net(images.to(device, memory_format=memory_format)).float(), labels.to(device))
        for images, labels in loader
    )


def score_logits(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Top-1 (percent), mean cross-entropy and count of ``(logits, labels)`` batches."""
    correct, total, loss_sum = 0, 0, 0.0
    for logits, labels in batches:
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        total += len(labels)
    if total == 0:
        raise ValueError("evaluation loader is empty")
    return {"top1": 100.0 * correct / total, "loss": loss_sum / total, "images": total}


class SubnetEvaluator:
    """Top-1 of sub-networks of a supernet, each BN-recalibrated on ``calibration_set``
    and evaluated on ``test_set`` (validation during training, the accuracy dataset).

    Evaluation images are deterministic, so when a split fits in ``cache_bytes`` at a
    resolution it is decoded once and kept as tensors: later evaluations cost only the
    forward passes, not the decoding and resizing again.

    ``runtime`` is what runs the sub-network: ``"torch"`` (eager, on ``device``) or
    ``"onnxruntime"`` (CPU only; the same measurement, 2.4x as fast per arch at 1,500
    images and more with more images, see :mod:`.ort`).
    """

    def __init__(
        self,
        calibration_set: Any,
        test_set: Any,
        *,
        calibration_images: int,
        batch_size: int = 256,
        num_workers: int = 2,
        seed: int = 0,
        device: torch.device | str = "cpu",
        memory_format: torch.memory_format = torch.contiguous_format,
        cache_bytes: int = 512 * 2**20,
        runtime: str = "torch",
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if runtime == "onnxruntime" and torch.device(device).type != "cpu":
            raise ValueError(f"runtime 'onnxruntime' measures on the CPU, not on {device}")
        self.calibration_set = calibration_set
        self.test_set = test_set
        self.calibration_images = calibration_images
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.device = torch.device(device)
        self.memory_format = memory_format
        self.cache_bytes = cache_bytes
        self.runtime = runtime
        self._cache: dict[tuple[str, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def batches(self, which: str, resolution: int) -> Iterable:
        """Evaluation batches of the calibration (only the images it needs) or test set."""
        key = (which, resolution)
        if key in self._cache:
            return self._cache[key]
        dataset = self.calibration_set if which == "calibration" else self.test_set
        if which == "calibration":
            n = min(len(dataset), self.calibration_images)
            dataset = datamod.subset_for_budget(dataset, n, self.seed)
        loader = datamod.make_loader(
            dataset,
            batch_size=self.batch_size,
            resolutions=[resolution],
            train=False,
            seed=self.seed,
            num_workers=self.num_workers,
        )
        if len(dataset) * 3 * resolution * resolution * 4 > self.cache_bytes:
            return loader
        self._cache[key] = batches = [(images, labels) for images, labels in loader]
        return batches

    def evaluate_arch(self, net: Supernet, arch: ArchValue) -> float:
        """Top-1 (percent) of ``arch`` at its own resolution, after BN recalibration."""
        if self.runtime == "onnxruntime":
            from .ort import recalibrate_and_evaluate

            return recalibrate_and_evaluate(
                net.extract(arch),
                self.batches("calibration", arch.r),
                self.calibration_images,
                self.batches("test", arch.r),
            )["top1"]
        subnet = recalibrate_bn(
            net,
            arch,
            self.batches("calibration", arch.r),
            self.calibration_images,
            device=self.device,
            memory_format=self.memory_format,
        )
        metrics = evaluate(
            subnet,
            self.batches("test", arch.r),
            device=self.device,
            memory_format=self.memory_format,
        )
        return metrics["top1"]

    def run(
        self, net: Supernet, archs: dict[str, ArchValue], resolutions: Sequence[int]
    ) -> dict[str, float]:
        """Top-1 (percent) of each named arch at each resolution, as ``name@resolution``;
        archs that coincide are evaluated once."""
        results: dict[str, float] = {}
        for resolution in resolutions:
            done: dict[ArchValue, float] = {}
            for name, arch in archs.items():
                arch = dataclasses.replace(arch, r=resolution)
                if arch not in done:
                    done[arch] = round(self.evaluate_arch(net, arch), 2)
                results[f"{name}@{resolution}"] = done[arch]
        return results
