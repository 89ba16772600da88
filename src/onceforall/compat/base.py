"""What every family's compatibility with the authors' package shares: the errors, how
their files are read (``torch.load(weights_only=True)``: nothing in them is executed),
how their conv/BN names map to ours, and :class:`ReferenceFormat`, the record a family
fills in to say how the authors store it (see :mod:`.mbconv`, :mod:`.resnet`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from ..errors import FileFormatError, OnceForAllError
from ..storage.reading import read_weights_only
from ..storage.state_dicts import state_dict_problems

__all__ = [
    "AuthorsPredictorFormat",
    "NetConfigError",
    "ReferenceCheckpointError",
    "ReferenceFormat",
    "block_conv",
    "conv_bn_keys",
    "load_mapped",
    "read_state_dict",
]


class ReferenceCheckpointError(OnceForAllError, ValueError):
    """A reference checkpoint that does not fit the named supernet."""


class NetConfigError(OnceForAllError, ValueError):
    """A specialised net's ``net.config`` that is not a sub-network of one of our
    supernets (see :mod:`onceforall.compat.specialized`)."""


def _unchanged(theirs: Mapping[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    return dict(theirs)


@dataclass(frozen=True)
class AuthorsPredictorFormat:
    """An accuracy predictor the authors ship for one family: an MLP on their encoding
    of the archs, whose output is top-1 as a fraction.

    ``layout`` is how its state dict names the layers: ``"sequential"`` (an
    ``nn.Sequential`` of Linear and ReLU, the last Linear with a bias; their tutorial's
    predictor) or ``"nas"`` (their ``ofa.nas`` ``AccuracyPredictor``: ``layers.*`` and
    ``base_acc``). ``supernet`` is our name of the supernet it predicts for;
    ``features`` the width of their encoding, which ``encode(space, genes)`` computes
    for gene rows of (a resolution subset of) that supernet's space, and
    ``resolutions`` the input sizes it encodes. ``our_columns(space)``, where our
    one-hot encoding of ``space`` maps onto theirs column by column, gives the column
    of theirs holding each of ours (it raises ``ValueError`` saying why not)."""

    description: str
    layout: str
    supernet: str
    features: int
    resolutions: tuple[int, ...]
    encode: Callable[[Any, np.ndarray], np.ndarray]
    our_columns: Callable[[Any], np.ndarray] | None = None


@dataclass(frozen=True)
class ReferenceFormat:
    """How the authors' package stores one family.

    ``required`` lists the checkpoint keys that identify such a checkpoint (each as its
    alternative spellings); ``classifier`` the spellings of the classifier weight, whose
    rows give the number of classes. ``supernet_keys(net)`` and ``subnet_keys(subnet)``
    map our state-dict keys to theirs; ``normalise(theirs, expected)`` renames the older
    spellings their loader also reads. ``net_configs`` maps the class name their
    ``net.config`` carries to our supernets it may come from, and
    ``subnet_from_net_config(net_config, config, supernet, resolution)`` reads one back
    into our static network (raising :class:`NetConfigError` where it does not fit).
    """

    description: str
    required: tuple[tuple[str, ...], ...]
    classifier: tuple[str, ...]
    supernet_keys: Callable[[Any], dict[str, str]]
    subnet_keys: Callable[[Any], dict[str, str]]
    net_configs: Mapping[str, tuple[str, ...]]
    subnet_from_net_config: Callable[[Mapping[str, Any], Any, str, int], Any]
    normalise: Callable[[Mapping[str, torch.Tensor], set[str]], dict] = field(default=_unchanged)
    # Their accuracy predictors for the family, and the keys of their per-resolution
    # latency lookup tables: ``latency_keys(config, r)`` -> (the fixed parts' keys in
    # the order their code adds them, {(slot, k, e): block key}).
    predictors: tuple[AuthorsPredictorFormat, ...] = ()
    latency_keys: Callable[[Any, int], tuple[tuple[str, ...], dict]] | None = None


def conv_bn_keys(ours: Iterable[str], prefix: str, theirs: str, nested: bool) -> dict[str, str]:
    """Keys of one of our ``conv``/``bn`` sequences (``prefix``) -> the authors' keys
    under ``theirs``. Their elastic layers wrap conv and BN once more (``conv.conv``,
    ``bn.bn``, set ``nested``) and store kernel transforms as ``conv.7to5_matrix``."""
    inner = ".conv" if nested else ""
    inner_bn = ".bn" if nested else ""
    mapping: dict[str, str] = {}
    for key in ours:
        if key.startswith(prefix + ".conv."):
            rest = key[len(prefix) + len(".conv.") :]
            if rest.startswith("kernel_transforms."):
                mapping[key] = f"{theirs}.conv.{rest.split('.')[1]}_matrix"
            else:
                mapping[key] = f"{theirs}.conv{inner}.{rest}"
        elif key.startswith(prefix + ".bn."):
            mapping[key] = f"{theirs}.bn{inner_bn}.{key[len(prefix) + len('.bn.') :]}"
    return mapping


def read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        data = read_weights_only(path, "reference checkpoint")
    except FileFormatError as exc:  # in one line, as a reference checkpoint's error
        raise ReferenceCheckpointError(str(exc)) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]  # their training checkpoints wrap it
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ReferenceCheckpointError(f"{path} holds no state dict of tensors")
    # DataParallel saves prefix "module."; their older releases named the block's layer
    # "mobile_inverted_conv" (their own loader renames it the same way).
    return {
        k.removeprefix("module.").replace(".mobile_inverted_conv.", ".conv."): v
        for k, v in data.items()
    }


def load_mapped(
    net: torch.nn.Module,
    theirs: Mapping[str, torch.Tensor],
    mapping: Mapping[str, str],
    what: str,
) -> None:
    """Load ``theirs`` into ``net`` through ``mapping`` (our key -> their key), or raise
    :class:`ReferenceCheckpointError` (prefixed by ``what``) listing missing and
    unexpected keys and wrong shapes by name. Nothing is loaded unless everything fits."""
    own = net.state_dict()
    problems = state_dict_problems({k: own[o].shape for o, k in mapping.items()}, theirs)
    if problems:
        raise ReferenceCheckpointError(f"{what}: " + "; ".join(problems))
    net.load_state_dict({o: theirs[k] for o, k in mapping.items()})


def block_conv(block: Mapping[str, Any]) -> Mapping[str, Any]:
    conv = block.get("conv", block.get("mobile_inverted_conv"))  # older releases
    if not isinstance(conv, Mapping):
        raise NetConfigError(f"block {block.get('name')!r} has no 'conv' layer config")
    return conv


def choice_index(value: Any, choices: tuple, what: str) -> int:
    if value not in choices:
        raise NetConfigError(f"{what} {value!r} is none of {list(choices)}")
    return choices.index(value)
