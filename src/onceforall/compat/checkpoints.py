"""Weights saved by the authors' code (the ``ofa`` package) mapped onto our supernets.

Their OFA-MobileNetV3 and OFA-ProxylessNAS number their blocks (``blocks.0`` is the
fixed first block, ``blocks.1..`` the elastic slots) and nest each elastic conv and BN
one level deeper; ours names stages. The mapping is derived from our table-driven block
plan, so it covers every width multiplier. Their OFA-ResNet50 numbers its bottlenecks
``blocks.0..17`` by slot and calls its deep stem ``input_stem.0..2``. Files are read with
``torch.load(weights_only=True)``: nothing in them is executed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import torch

from ..errors import InputNotFoundError, OnceForAllError, UnknownNameError
from ..models import create_supernet
from ..models.mbconv import MBConvNetConfig, OFAMBConvNet, block_plan
from ..models.resnet import OFAResNet, bottleneck_plan
from ..storage.state_dicts import state_dict_problems

__all__ = [
    "REFERENCE_NAMES",
    "NetConfigError",
    "ReferenceCheckpointError",
    "import_reference",
    "load_mapped",
    "load_reference_checkpoint",
    "read_state_dict",
    "reference_keys",
]

# The authors' names for their released supernets -> our registry names.
REFERENCE_NAMES = {
    "ofa_mbv3_d234_e346_k357_w1.0": "ofa_mbv3_w1.0",
    "ofa_mbv3_d234_e346_k357_w1.2": "ofa_mbv3_w1.2",
    "ofa_proxyless_d234_e346_k357_w1.3": "ofa_proxyless_w1.3",
    "ofa_resnet50": "ofa_resnet50",
    "ofa_resnet50_d0-1-2_e0.2-0.25-0.35_w0.65-0.8-1.0": "ofa_resnet50",  # their file name
}


class ReferenceCheckpointError(OnceForAllError, ValueError):
    """A reference checkpoint that does not fit the named supernet."""


class NetConfigError(OnceForAllError, ValueError):
    """A specialised net's ``net.config`` that is not a sub-network of one of our
    supernets (see :mod:`onceforall.compat.specialized`)."""


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


def mbconv_block_keys(
    ours: Iterable[str], prefix: str, theirs: str, nested: bool
) -> dict[str, str]:
    """Keys of one of our MBConv blocks -> theirs (``blocks.N.conv``)."""
    ours = list(ours)
    mapping: dict[str, str] = {}
    for part, their_part in (
        ("expand", "inverted_bottleneck"),
        ("depthwise", "depth_conv"),
        ("project", "point_linear"),
    ):
        mapping.update(conv_bn_keys(ours, f"{prefix}.{part}", f"{theirs}.{their_part}", nested))
    for part in ("reduce", "expand"):
        for tensor in ("weight", "bias"):
            key = f"{prefix}.se.{part}.{tensor}"
            if key in ours:
                mapping[key] = f"{theirs}.depth_conv.se.fc.{part}.{tensor}"
    return mapping


def mbconv_head_keys(ours: Iterable[str], config: MBConvNetConfig) -> dict[str, str]:
    """Stem, first block and head keys -> theirs (the same in supernet and sub-network)."""
    ours = list(ours)
    mapping = conv_bn_keys(ours, "stem", "first_conv", nested=False)
    mapping.update(mbconv_block_keys(ours, "first_block", "blocks.0.conv", nested=False))
    if config.head_width is None:
        mapping.update(conv_bn_keys(ours, "final_expand", "feature_mix_layer", nested=False))
    else:
        mapping.update(conv_bn_keys(ours, "final_expand", "final_expand_layer", nested=False))
        mapping["feature_mix.conv.weight"] = "feature_mix_layer.conv.weight"
    mapping["classifier.weight"] = "classifier.linear.weight"
    mapping["classifier.bias"] = "classifier.linear.bias"
    return mapping


def _mbconv_keys(net: OFAMBConvNet) -> dict[str, str]:
    """Our state-dict key -> the authors' key, for every tensor. Their MobileNetV3 calls
    the pre-pool 1x1 conv ``final_expand_layer`` and the post-pool one
    ``feature_mix_layer``; their ProxylessNAS has only the pre-pool one and calls it
    ``feature_mix_layer``."""
    ours = list(net.state_dict().keys())
    mapping = mbconv_head_keys(ours, net.config)
    for plan in block_plan(net.config):
        mapping.update(
            mbconv_block_keys(
                ours, f"stages.{plan.stage}.{plan.index}", f"blocks.{plan.slot + 1}.conv", True
            )
        )
    unmapped = sorted(set(ours) - set(mapping))
    if unmapped:  # a family change this mapping does not know yet
        raise NotImplementedError(f"no reference name for {unmapped[:5]}")
    return mapping


def _resnet_keys(net: OFAResNet) -> dict[str, str]:
    """Our state-dict key -> the authors' key, for every tensor of OFA-ResNet50. Their
    deep stem is ``input_stem.0`` (conv), ``input_stem.1.conv`` (the skippable residual
    block's conv) and ``input_stem.2``; their bottlenecks are ``blocks.<slot>`` with the
    shortcut named ``downsample``; every conv and BN of theirs is nested once more."""
    ours = list(net.state_dict().keys())
    mapping = conv_bn_keys(ours, "stem.conv1", "input_stem.0", nested=True)
    mapping.update(conv_bn_keys(ours, "stem.residual", "input_stem.1.conv", nested=True))
    mapping.update(conv_bn_keys(ours, "stem.conv2", "input_stem.2", nested=True))
    for plan in bottleneck_plan(net.config):
        prefix, theirs = f"stages.{plan.stage}.{plan.index}", f"blocks.{plan.slot}"
        for part in ("conv1", "conv2", "conv3"):
            mapping.update(conv_bn_keys(ours, f"{prefix}.{part}", f"{theirs}.{part}", True))
        mapping.update(conv_bn_keys(ours, f"{prefix}.shortcut", f"{theirs}.downsample", True))
    mapping["classifier.weight"] = "classifier.linear.linear.weight"
    mapping["classifier.bias"] = "classifier.linear.linear.bias"
    unmapped = sorted(set(ours) - set(mapping))
    if unmapped:  # a family change this mapping does not know yet
        raise NotImplementedError(f"no reference name for {unmapped[:5]}")
    return mapping


def _nest_resnet_keys(
    theirs: Mapping[str, torch.Tensor], expected: set[str]
) -> dict[str, torch.Tensor]:
    """Their ``OFAResNets.load_state_dict`` also reads files whose elastic layers are not
    nested (``bn.weight``, ``conv.weight``, ``linear.weight`` one level up); rename such
    keys with their rules, where that gives a key of the network (others stay as they
    are, to be reported by name)."""
    nested = {}
    for key, value in theirs.items():
        if key not in expected:
            if ".linear." in key:
                renamed = key.replace(".linear.", ".linear.linear.")
            elif "bn." in key:
                renamed = key.replace("bn.", "bn.bn.")
            else:
                renamed = key.replace("conv.weight", "conv.conv.weight")
            key = renamed if renamed in expected else key
        nested[key] = value
    return nested


def reference_keys(net: OFAMBConvNet | OFAResNet) -> dict[str, str]:
    """Our state-dict key -> the key the authors' code uses for the same tensor."""
    if isinstance(net, OFAResNet):
        return _resnet_keys(net)
    if not isinstance(net, OFAMBConvNet):
        raise TypeError(f"no reference mapping for {type(net).__name__} yet")
    return _mbconv_keys(net)


def read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise InputNotFoundError(f"no reference checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ReferenceCheckpointError(
            f"{path} cannot be read as a weights-only PyTorch file: {exc}"
        ) from exc
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


def load_reference_checkpoint(
    path: str | os.PathLike, name: str, **overrides
) -> OFAMBConvNet | OFAResNet:
    """Our supernet holding the weights of a checkpoint saved by the authors' code.

    ``name`` is their name (``ofa_mbv3_d234_e346_k357_w1.0``, ...) or ours
    (``ofa_mbv3_w1.0``, ...; see :data:`REFERENCE_NAMES`);
    the number of classes is read from the checkpoint. Missing or unexpected keys and
    wrong shapes are refused, listed by name.
    """
    name = REFERENCE_NAMES.get(name, name)
    if name not in REFERENCE_NAMES.values():
        known = ", ".join(f"{k} ({v})" for k, v in REFERENCE_NAMES.items())
        raise UnknownNameError(f"no reference mapping for {name!r}; known: {known}")
    theirs = read_state_dict(Path(path))
    if name == "ofa_resnet50":
        return _load_resnet(path, theirs, name, **overrides)
    classifier = theirs.get("classifier.linear.weight")
    if classifier is None:
        raise ReferenceCheckpointError(
            f"{path} has no 'classifier.linear.weight': not an OFA-MobileNetV3 or "
            "OFA-ProxylessNAS checkpoint"
        )
    net = create_supernet(name, num_classes=classifier.shape[0], **overrides)
    load_mapped(net, theirs, reference_keys(net), f"{path} does not fit {name}")
    return net.eval()


def _load_resnet(
    path: str | os.PathLike, theirs: Mapping[str, torch.Tensor], name: str, **overrides
) -> OFAResNet:
    # Their nested key names, or the non-nested ones their loader also reads.
    stem = theirs.get("input_stem.0.conv.conv.weight", theirs.get("input_stem.0.conv.weight"))
    classifier = theirs.get(
        "classifier.linear.linear.weight", theirs.get("classifier.linear.weight")
    )
    if stem is None or classifier is None:
        raise ReferenceCheckpointError(
            f"{path} has no 'input_stem.0.conv.conv.weight' and "
            "'classifier.linear.linear.weight': not an OFA-ResNet50 checkpoint"
        )
    net = create_supernet(name, num_classes=classifier.shape[0], **overrides)
    mapping = reference_keys(net)
    theirs = _nest_resnet_keys(theirs, set(mapping.values()))
    load_mapped(net, theirs, mapping, f"{path} does not fit {name}")
    return net.eval()


def import_reference(
    path: str | os.PathLike, name: str, run_dir: str | os.PathLike, config: str | None = None
) -> Path:
    """Write a run directory holding the authors' supernet, so that ``ofa acc-dataset``,
    ``specialize``, ``export`` and further training work on it as on a supernet trained
    here. ``config`` (a preset or YAML file; default: the family's ImageNet preset)
    supplies the data settings (resolutions, splits) and the stages."""
    from ..storage.checkpoint import save_checkpoint
    from ..storage.run_layout import RunLayout
    from ..training import load_config
    from ..training.run_dir import write_run_config

    net = load_reference_checkpoint(path, name)
    ours = REFERENCE_NAMES.get(name, name)
    if config is None:
        config = "imagenet-resnet50" if isinstance(net, OFAResNet) else "imagenet"
    settings = load_config(config, {"supernet": ours})
    layout = RunLayout(run_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    write_run_config(layout.root, settings)
    state = {"model": net.state_dict(), "stage": f"reference:{Path(path).name}"}
    save_checkpoint(layout.supernet, "supernet", state, keep=1)
    return layout.root
