"""When the trainer saves, what a checkpoint holds, and the weights a finished stage leaves.

A training checkpoint (``RUN_DIR/checkpoints``) holds everything a resumed run needs to
continue bit for bit: ``model``, ``optimizer``, ``position``, ``stage_name``, ``rng`` and
``config``. It is written every ``checkpoint_every_steps`` global steps, after every epoch
and when ``max_steps`` stops the run; the newest ``keep_checkpoints`` are kept. Its tag
names the position: ``{stage}-e{epoch}-b{batch}-s{global_step}``.

At the end of a stage the supernet's weights go to ``RUN_DIR/supernet``; after a stage
that does not distil (the full network) also to ``RUN_DIR/teacher``, the frozen teacher
of the stages after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..storage.checkpoint import load_latest_checkpoint, save_checkpoint
from ..storage.run_layout import RunLayout
from .config import StageConfig, TrainConfig
from .rng_state import capture_rng_state
from .schedule import Position

__all__ = ["Checkpointer", "checkpoint_tag"]


def checkpoint_tag(stage_name: str, pos: Position) -> str:
    """The tag of a checkpoint taken at ``pos``: ``{stage}-e{epoch}-b{batch}-s{global_step}``."""
    return f"{stage_name}-e{pos.epoch}-b{pos.batch}-s{pos.global_step}"


@dataclass
class Checkpointer:
    """Saves and finds the checkpoints of one run directory. Only the process that owns
    the directory (``enabled``) writes; on the other workers saving does nothing."""

    layout: RunLayout
    config: TrainConfig
    net: nn.Module
    enabled: bool = True

    @property
    def directory(self) -> Path:
        """Where the training checkpoints are."""
        return self.layout.checkpoints

    def due(self, global_step: int) -> bool:
        """Whether the periodic checkpoint falls on ``global_step``."""
        every = self.config.checkpoint_every_steps
        return bool(every) and global_step % every == 0

    def state(self, optimizer: torch.optim.Optimizer, pos: Position) -> dict[str, Any]:
        """What a checkpoint at ``pos`` holds."""
        return {
            "model": self.net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "position": pos.as_dict(),
            "stage_name": self.config.stages[pos.stage].name,
            "rng": capture_rng_state(),
            "config": self.config.to_dict(),
        }

    def save(self, optimizer: torch.optim.Optimizer, pos: Position) -> Path | None:
        """Write a checkpoint at ``pos`` (keeping the newest ``keep_checkpoints``); its
        path, or None on a worker that does not write."""
        if not self.enabled:
            return None
        tag = checkpoint_tag(self.config.stages[pos.stage].name, pos)
        state = self.state(optimizer, pos)
        return save_checkpoint(self.directory, tag, state, keep=self.config.keep_checkpoints)

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest complete checkpoint (path and state), or None. Newer ones that fail
        their check are moved aside (this process is the directory's writer)."""
        return load_latest_checkpoint(self.directory, move_aside=self.enabled)

    def save_stage_weights(self, stage: StageConfig) -> None:
        """The weights a finished ``stage`` leaves: the supernet, and for a stage that does
        not distil (the full network) the teacher of the later stages."""
        if not stage.distill:
            self._save_weights(self.layout.teacher, stage.name)
        self._save_weights(self.layout.supernet, stage.name)

    def _save_weights(self, directory: Path, stage: str) -> None:
        if self.enabled:  # the tag is the folder's name: teacher/ckpt-...-teacher.pt
            state = {"model": self.net.state_dict(), "stage": stage}
            save_checkpoint(directory, directory.name, state, keep=1)
