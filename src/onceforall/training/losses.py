"""Losses of progressive shrinking: label-smoothed cross-entropy plus distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["soft_cross_entropy", "supernet_loss"]


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a probability distribution (the teacher's softmax)."""
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def supernet_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_probs: torch.Tensor | None,
    label_smoothing: float,
    kd_ratio: float,
) -> torch.Tensor:
    """CE with label smoothing, plus ``kd_ratio`` x soft CE against the teacher."""
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    if teacher_probs is not None and kd_ratio > 0:
        loss = loss + kd_ratio * soft_cross_entropy(logits.float(), teacher_probs)
    return loss
