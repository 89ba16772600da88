"""The accuracy predictor: predicted top-1 of a sub-network from its one-hot encoding.

The model and its file (fitting it is :mod:`.fit`). As in the paper (SPEC section 4): an
MLP of three hidden layers of 400 ReLU units on the space's one-hot encoding, whose
output is added to a fixed base accuracy (the mean of the training rows), trained with a
squared error on measured (arch, accuracy) pairs. With ``members > 1`` it is an
ensemble: that many such MLPs, each initialised and trained from its own seed, their
outputs averaged (``members=1`` is the paper's predictor). With ``layers=0`` it is
linear in the encoding, fitted in closed form as a ridge regression (each choice of each
layer adds its own amount to the accuracy). A saved predictor carries the encoding
layout it was trained on and refuses another space's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..arch import ArchInput, Space
from ..errors import FileFormatError, OnceForAllError, check_whole_number
from ..models import all_families
from ..storage.atomic import atomic_file
from ..storage.reading import read_weights_only

__all__ = ["PREDICTOR_KINDS", "AccuracyPredictor", "PredictorMismatchError"]

_FORMAT = "onceforall-accuracy-predictor"

# What ``specialize.predictor`` names: hidden layers of the MLP (0: linear, ridge).
PREDICTOR_KINDS = {"mlp": 3, "linear": 0}


class PredictorMismatchError(OnceForAllError, ValueError):
    """A predictor used with (or loaded for) a space whose encoding differs."""


def _mlp(inputs: int, hidden: int, layers: int) -> nn.Sequential:
    widths = [inputs] + [hidden] * layers
    modules: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        modules += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    modules.append(nn.Linear(widths[-1], 1, bias=False))
    return nn.Sequential(*modules)


class AccuracyPredictor(nn.Module):
    """``base_accuracy + MLP(encoding)`` in percent, or with ``members > 1`` the mean of
    that many MLPs' outputs added to the base."""

    def __init__(
        self,
        space: Space,
        hidden: int = 400,
        layers: int = 3,
        base_accuracy: float = 0.0,
        members: int = 1,
    ) -> None:
        super().__init__()
        check_whole_number("members", members, 1)
        self.space = space
        self.hidden, self.layers, self.members = hidden, layers, members
        # The first MLP keeps the name of the single-MLP predictor's (its files and the
        # authors' format hold ``mlp.*``); the others are ``others.<i>.*``.
        self.mlp = _mlp(space.encoding_size, hidden, layers)
        self.others = nn.ModuleList(
            _mlp(space.encoding_size, hidden, layers) for _ in range(members - 1)
        )
        self.register_buffer("base_accuracy", torch.tensor(float(base_accuracy)))
        # The digest of the supernet whose sub-networks it was fitted on, when known
        # (see onceforall.training.run_dir.supernet_digest); saved with it.
        self.supernet_sha256: str | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Predicted accuracy ``(N,)`` from encodings ``(N, encoding_size)``."""
        out = self.mlp(features)
        for mlp in self.others:
            out = out + mlp(features)
        return self.base_accuracy + out.squeeze(-1) / self.members

    def member_mlps(self) -> list[nn.Sequential]:
        return [self.mlp, *self.others]

    @torch.no_grad()
    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """Vectorised prediction for a float32 array of encodings (search uses this)."""
        return self(torch.from_numpy(np.ascontiguousarray(features, np.float32))).numpy()

    def encode(self, archs: Iterable[ArchInput]) -> np.ndarray:
        return np.stack([self.space.encode(a) for a in archs])

    def predict(self, archs: Sequence[ArchInput]) -> np.ndarray:
        """Predicted top-1 (percent) of each arch (validated against the space)."""
        was_training = self.training
        self.eval()
        try:
            return self.predict_features(self.encode(archs))
        finally:
            self.train(was_training)

    # ------------------------------------------------ the ArchPredictor protocol
    @property
    def resolutions(self) -> tuple[int, ...]:
        """The input sizes this predictor encodes (those of the space it was fitted on)."""
        return tuple(self.space.resolutions)

    def describe(self) -> str:
        mlp = f"MLP ({self.layers} x {self.hidden})"
        if self.layers == 0:
            mlp = "linear model (ridge)"
        elif self.members > 1:
            mlp = f"ensemble of {self.members} MLPs ({self.layers} x {self.hidden})"
        return f"onceforall {mlp} on {self.space.encoding_size} one-hot features, top-1 in percent"

    def check_supernet(self, supernet: Any) -> None:
        """Raise :class:`PredictorMismatchError` unless ``supernet``'s space encodes like
        the one this predictor was fitted on."""
        self.check_space(supernet.space)

    def gene_predictor(self, space: Space) -> Callable[[np.ndarray], np.ndarray]:
        """Predicted top-1 of gene rows of ``space``: this predictor's space, or the same
        space at fewer of its resolutions (the resolution is the genome's last gene)."""
        own = self.space
        if space != own:
            narrowed = dataclasses.replace(own, resolutions=tuple(space.resolutions))
            if narrowed != space or not set(space.resolutions) <= set(own.resolutions):
                self.check_space(space)  # names the difference
        index = np.array([own.resolutions.index(r) for r in space.resolutions], dtype=np.intp)
        genome = own.genome()
        self.eval()

        def predict(genes: np.ndarray) -> np.ndarray:
            if space != own:
                genes = np.concatenate([genes[:, :-1], index[genes[:, -1:]]], axis=1)
            return self.predict_features(genome.encode(genes)).astype(np.float64)

        return predict

    def check_space(self, space: Space) -> None:
        """Raise :class:`PredictorMismatchError` unless ``space`` encodes like ours."""
        ours, theirs = self.space.encoding_layout(), space.encoding_layout()
        if ours != theirs:
            diff = {k: (ours.get(k), theirs.get(k)) for k in ours if ours.get(k) != theirs.get(k)}
            raise PredictorMismatchError(
                "the predictor was trained on another encoding; differences "
                f"(predictor, given): {diff}"
            )

    # ----------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> Path:
        """Write weights and the space atomically; load with :meth:`load` (no pickle)."""
        payload = {
            "format": _FORMAT,
            "version": 1,
            "space": json.dumps(dataclasses.asdict(self.space)),
            "layout": json.dumps(self.space.encoding_layout()),
            "hidden": self.hidden,
            "layers": self.layers,
            "members": self.members,
            "state_dict": self.state_dict(),
        }
        if self.supernet_sha256 is not None:
            payload["supernet_sha256"] = self.supernet_sha256
        with atomic_file(path) as file:
            torch.save(payload, file)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, space: Space | None = None) -> AccuracyPredictor:
        """Load a saved predictor (``weights_only``: no code runs). With ``space``, refuse
        a predictor whose encoding differs from that space's."""
        path = Path(path)
        return cls.from_payload(read_weights_only(path, "accuracy predictor"), path, space)

    @staticmethod
    def is_payload(payload: Any) -> bool:
        """Whether ``payload`` (a file's contents, read with ``weights_only``) is a
        predictor written by :meth:`save`."""
        return isinstance(payload, dict) and payload.get("format") == _FORMAT

    @classmethod
    def from_payload(
        cls, payload: Any, path: str | os.PathLike, space: Space | None = None
    ) -> AccuracyPredictor:
        """The predictor a file read by :meth:`load` holds (``path`` names it in errors)."""
        if not cls.is_payload(payload):
            raise FileFormatError(f"{path} is not an onceforall accuracy predictor file")
        fields = json.loads(payload["space"])
        kind = json.loads(payload["layout"]).get("type")
        saved_space = _space_class(kind)(**{k: tuple(v) for k, v in fields.items()})
        members = payload.get("members", 1)  # files before ensembles hold one MLP
        if not (isinstance(members, int) and not isinstance(members, bool) and members >= 1):
            raise FileFormatError(f"{path}: 'members' must be a whole number >= 1, not {members!r}")
        predictor = cls(
            saved_space, hidden=payload["hidden"], layers=payload["layers"], members=members
        )
        predictor.load_state_dict(payload["state_dict"])
        digest = payload.get("supernet_sha256")
        predictor.supernet_sha256 = digest if isinstance(digest, str) else None
        if space is not None:
            predictor.check_space(space)
        return predictor.eval()


def _space_class(encoding: str | None) -> type:
    """The space class whose one-hot encoding is ``encoding``."""
    for family in all_families():
        if family.space.encoding_type == encoding:
            return family.space
    raise FileFormatError(f"no model family encodes archs as {encoding!r}")
