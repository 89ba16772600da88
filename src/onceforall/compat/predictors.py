"""The authors' accuracy predictors, read as they ship them, and ours written in their
format.

Their files are plain state dicts of an MLP (read with ``torch.load(weights_only=True)``:
nothing in them runs). A file is recognised by its content: the names and shapes of its
tensors say which of their predictors it is (their tutorial's OFA-MobileNetV3 predictor,
128 features; their OFA-ResNet50 predictor, 82 features; see each family's
:class:`~.base.AuthorsPredictorFormat`), and it is checked against the supernet it is
used with. The result is an :class:`AuthorsPredictor`, which search and specialisation
use like ours (:class:`~onceforall.predictors.base.ArchPredictor`); it reproduces their
predictions exactly and reports them in percent.

:func:`open_predictor` is the one place a predictor file is read: ours or theirs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..arch import ArchInput, Space
from ..arch.base import describe_resolutions
from ..errors import FileFormatError
from ..models import all_families, family_for, supernet_config
from ..predictors.accuracy import AccuracyPredictor, PredictorMismatchError
from ..predictors.base import ArchPredictor, GenePredictor
from ..storage.atomic import atomic_file
from ..storage.reading import read_weights_only
from .base import AuthorsPredictorFormat

__all__ = [
    "AuthorsPredictor",
    "open_predictor",
    "read_authors_predictor",
    "read_weights_only",
    "write_authors_predictor",
]

_SHAPELESS = ("resolutions", "dropout", "bn_eps", "bn_momentum")  # fix no weight's shape


def _formats() -> list[AuthorsPredictorFormat]:
    return [p for f in all_families() if f.reference is not None for p in f.reference.predictors]


def _mlp_layers(state: Mapping[str, Any]) -> tuple[str, list[tuple], float | None] | None:
    """(layout, [(weight, bias or None)], base) of an MLP state dict in one of their two
    layouts, or None when the tensors are not such an MLP."""
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    keys = set(state)
    n = len([k for k in keys if re.fullmatch(r"\d+\.weight", k)])
    sequential = {f"{2 * i}.{p}" for i in range(n) for p in ("weight", "bias")}
    if n and keys == sequential:
        return (
            "sequential",
            [(state[f"{2 * i}.weight"], state[f"{2 * i}.bias"]) for i in range(n)],
            None,
        )
    n = len([k for k in keys if re.fullmatch(r"layers\.\d+\.0\.weight", k)])
    nas = {f"layers.{i}.0.{p}" for i in range(n) for p in ("weight", "bias")}
    if n and keys == nas | {f"layers.{n}.weight", "base_acc"} and state["base_acc"].numel() == 1:
        layers = [(state[f"layers.{i}.0.weight"], state[f"layers.{i}.0.bias"]) for i in range(n)]
        return "nas", layers + [(state[f"layers.{n}.weight"], None)], float(state["base_acc"])
    return None


def _chained(layers: list[tuple]) -> bool:
    """Every weight 2-D, each layer's input the previous one's output, one output."""
    width = None
    for weight, bias in layers:
        if weight.ndim != 2 or (width is not None and weight.shape[1] != width):
            return False
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            return False
        width = weight.shape[0]
    return width == 1


def _known() -> str:
    return "; ".join(f"{f.description} ({f.features} features)" for f in _formats())


class AuthorsPredictor:
    """One of the authors' accuracy predictors, bound to the supernet it was checked
    against: their MLP on their encoding, output (a fraction) reported in percent."""

    def __init__(
        self,
        path: Path,
        spec: AuthorsPredictorFormat,
        layers: list[tuple],
        base: float | None,
        supernet: Any,
    ) -> None:
        self.path, self.spec, self.base = path, spec, base
        modules: list[nn.Module] = []
        for i, (weight, bias) in enumerate(layers):
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(weight.float())
                if bias is not None:
                    linear.bias.copy_(bias.float())
            modules += [linear] if i == len(layers) - 1 else [linear, nn.ReLU()]
        self.mlp = nn.Sequential(*modules).eval()
        self.space: Space = supernet.space
        self.check_supernet(supernet)

    @property
    def resolutions(self) -> tuple[int, ...]:
        return self.spec.resolutions

    def describe(self) -> str:
        return (
            f"{self.spec.description} ({self.path}; {self.spec.features} features, its top-1 "
            "fraction reported in percent)"
        )

    def check_supernet(self, supernet: Any) -> None:
        """Raise :class:`PredictorMismatchError` unless ``supernet`` has the shapes of the
        supernet the predictor was made for and some resolution it encodes."""
        want = supernet_config(self.spec.supernet).to_dict()
        have = supernet.config.to_dict()
        differ = [
            k
            for k in sorted(set(want) | set(have))
            if k not in _SHAPELESS and want.get(k) != have.get(k)
        ]
        name = getattr(supernet, "name", None) or type(supernet).__name__
        if differ:
            listed = ", ".join(  # values where they are short
                k
                if isinstance(want.get(k), (list, dict))
                else f"{k} {have.get(k)!r} (expected {want.get(k)!r})"
                for k in differ
            )
            raise PredictorMismatchError(
                f"{self.path} is {self.spec.description}, made for {self.spec.supernet}; "
                f"{name} differs in {listed}"
            )
        if not set(supernet.space.resolutions) & set(self.resolutions):
            raise PredictorMismatchError(
                f"{self.path} encodes resolutions {describe_resolutions(self.resolutions)}; "
                f"{name} runs {describe_resolutions(supernet.space.resolutions)}, none of them"
            )

    @torch.no_grad()
    def _forward(self, features: np.ndarray) -> np.ndarray:
        out = self.mlp(torch.from_numpy(features))[:, 0]
        if self.base is not None:
            out = out + torch.tensor([self.base], dtype=out.dtype)
        return out.double().numpy() * 100.0

    def gene_predictor(self, space: Space) -> GenePredictor:
        """Predicted top-1 (percent) of gene rows of ``space`` (the supernet's space at
        resolutions this predictor encodes)."""
        outside = sorted(set(space.resolutions) - set(self.resolutions))
        if outside:
            raise PredictorMismatchError(
                f"{self.path} does not encode resolutions {outside}; it encodes "
                f"{describe_resolutions(self.resolutions)}"
            )
        encode = self.spec.encode
        return lambda genes: self._forward(encode(space, np.asarray(genes)))

    def predict(self, archs: Sequence[ArchInput]) -> np.ndarray:
        """Predicted top-1 (percent) of each arch of the supernet's space."""
        space = self.space
        genes = space.genome().genes_of(archs)
        used = sorted({space.resolutions[i] for i in genes[:, -1]})
        return self.gene_predictor(_at(space, used))(_reindex(space, used, genes))


def _at(space: Space, resolutions: Sequence[int]) -> Space:
    return dataclasses.replace(space, resolutions=tuple(resolutions))


def _reindex(space: Space, resolutions: Sequence[int], genes: np.ndarray) -> np.ndarray:
    index = {space.resolutions.index(r): i for i, r in enumerate(resolutions)}
    genes = genes.copy()
    genes[:, -1] = [index[int(g)] for g in genes[:, -1]]
    return genes


def read_authors_predictor(
    path: str | os.PathLike, supernet: Any, state: Any = None
) -> AuthorsPredictor:
    """One of the authors' predictor files (``state``: its contents, if already read),
    recognised by its tensors and checked against ``supernet``."""
    path = Path(path)
    if state is None:
        state = read_weights_only(path, "accuracy predictor")
    parsed = _mlp_layers(state) if isinstance(state, Mapping) else None
    if parsed is None or not _chained(parsed[1]):
        raise FileFormatError(
            f"{path} is neither an onceforall accuracy predictor nor one of the authors' "
            f"(an MLP state dict: {_known()})"
        )
    layout, layers, base = parsed
    width = layers[0][0].shape[1]
    specs = [f for f in _formats() if f.layout == layout and f.features == width]
    if not specs:
        raise FileFormatError(
            f"{path} is an MLP on {width} features; the authors' predictors are {_known()}"
        )
    family = family_for(supernet)
    fitting = [f for f in specs if f in (family.reference.predictors if family.reference else ())]
    if not fitting:
        raise PredictorMismatchError(
            f"{path} is {specs[0].description}, made for {specs[0].supernet}; "
            f"{getattr(supernet, 'name', type(supernet).__name__)} is not one"
        )
    return AuthorsPredictor(path, fitting[0], layers, base, supernet)


def open_predictor(path: str | os.PathLike, supernet: Any) -> ArchPredictor:
    """The accuracy predictor in the file ``path`` for ``supernet``: ours (written by
    :meth:`AccuracyPredictor.save`) or the authors', told apart by content."""
    path = Path(path)
    payload = read_weights_only(path, "accuracy predictor")
    if AccuracyPredictor.is_payload(payload):
        return AccuracyPredictor.from_payload(payload, path, space=supernet.space)
    return read_authors_predictor(path, supernet, payload)


def write_authors_predictor(predictor: AccuracyPredictor, path: str | os.PathLike) -> Path:
    """Write our ``predictor`` as the authors' own predictor file of its family (the
    tutorial's for OFA-MobileNetV3), to load with their code; refused where our encoding
    does not map onto theirs column by column, or the MLP has another shape."""
    family = family_for(predictor.space)
    specs = [p for p in (family.reference.predictors if family.reference else ()) if p.our_columns]
    if not specs:
        raise PredictorMismatchError(
            f"the authors have no predictor format our {family.tag} encoding maps onto "
            f"(ours: {json.dumps(predictor.space.encoding_layout())})"
        )
    spec = specs[0]  # the families' formats that ours maps onto are "sequential" ones
    try:
        columns = spec.our_columns(predictor.space)
    except ValueError as exc:
        raise PredictorMismatchError(f"cannot write {spec.description}: {exc}") from None
    if predictor.layers == 0:
        raise PredictorMismatchError(
            f"cannot write {spec.description}: theirs is an MLP; this predictor is linear "
            "(fit the paper's MLP with ofa train-predictor --kind mlp)"
        )
    if predictor.members > 1:
        raise PredictorMismatchError(
            f"cannot write {spec.description}: theirs is one MLP; this predictor is an "
            f"ensemble of {predictor.members} (fit one with specialize.predictor_members: 1)"
        )
    linears = [m for m in predictor.mlp if isinstance(m, nn.Linear)]
    width = predictor.space.encoding_size
    if [tuple(m.weight.shape) for m in linears] != [(400, width), (400, 400), (400, 400), (1, 400)]:
        raise PredictorMismatchError(
            f"cannot write {spec.description}: theirs has 3 hidden layers of 400; this one "
            f"has {predictor.layers} of {predictor.hidden}"
        )
    state = _their_state(linears, columns, spec, float(predictor.base_accuracy))
    with atomic_file(path) as file:
        torch.save(state, file)
    return Path(path)


def _their_state(
    linears: list[nn.Linear], columns: np.ndarray, spec: AuthorsPredictorFormat, base: float
) -> dict[str, torch.Tensor]:
    """Their state dict of our MLP: our first layer's columns moved to theirs, the output
    (percent, our base added) scaled to a fraction."""
    first = torch.zeros(linears[0].out_features, spec.features)
    first[:, torch.from_numpy(columns)] = linears[0].weight.detach()
    weights = [first] + [m.weight.detach() for m in linears[1:]]
    biases = [m.bias.detach() for m in linears[:-1]]
    weights[-1] = weights[-1] / 100.0
    biases.append(torch.tensor([base / 100.0]))
    return {  # their tutorial's nn.Sequential: Linear, ReLU, ..., Linear
        f"{2 * i}.{name}": tensor.clone().float()
        for i, (w, b) in enumerate(zip(weights, biases))
        for name, tensor in (("weight", w), ("bias", b))
    }
