"""Batch-norm recalibration and evaluation of sub-networks.

A sub-network's BN running statistics are not those of the supernet (which averages over
many sub-networks). Before a sub-network is evaluated or exported its statistics are
re-estimated: reset, then a cumulative average (momentum ``None``) over ~2,000 training
images run through it in train mode (SPEC section 2).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..arch import ArchLike
from ..models import Supernet

__all__ = ["recalibrate_bn", "evaluate"]


def _images(batch: object) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch  # type: ignore[index]


@torch.no_grad()
def recalibrate_bn(
    net: nn.Module,
    arch: ArchLike | None,
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
    saved = [(bn.momentum, bn.training) for bn in bns]
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
    for bn, (momentum, _) in zip(bns, saved):
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
    correct, total, loss_sum = 0, 0, 0.0
    for images, labels in loader:
        images = images.to(device, memory_format=memory_format)
        labels = labels.to(device)
        logits = net(images).float()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        total += len(labels)
    if total == 0:
        raise ValueError("evaluation loader is empty")
    return {"top1": 100.0 * correct / total, "loss": loss_sum / total, "images": total}
