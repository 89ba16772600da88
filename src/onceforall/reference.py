"""Weights saved by the authors' code (the ``ofa`` package) mapped onto our supernets.

Their OFA-MobileNetV3 numbers its blocks (``blocks.0`` is the fixed first block,
``blocks.1..20`` the elastic slots) and nests each conv and BN one level deeper; ours
names stages. The mapping is derived from our table-driven block plan, so it covers
every width multiplier. Files are read with ``torch.load(weights_only=True)``: nothing
in them is executed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch

from .models import create_supernet
from .models.mbconv import OFAMBConvNet, block_plan

__all__ = [
    "REFERENCE_NAMES",
    "ReferenceCheckpointError",
    "import_reference",
    "load_reference_checkpoint",
    "reference_keys",
]

# The authors' names for their released supernets -> our registry names.
REFERENCE_NAMES = {
    "ofa_mbv3_d234_e346_k357_w1.0": "ofa_mbv3_w1.0",
    "ofa_mbv3_d234_e346_k357_w1.2": "ofa_mbv3_w1.2",
}


class ReferenceCheckpointError(ValueError):
    """A reference checkpoint that does not fit the named supernet."""


def _mbv3_keys(net: OFAMBConvNet) -> dict[str, str]:
    """Our state-dict key -> the authors' key, for every tensor."""
    ours = net.state_dict().keys()
    mapping: dict[str, str] = {}

    def conv_bn(prefix: str, theirs: str, nested: bool) -> None:
        # Their elastic layers wrap conv and BN once more (conv.conv, bn.bn).
        inner = ".conv" if nested else ""
        inner_bn = ".bn" if nested else ""
        for key in ours:
            if key.startswith(prefix + ".conv."):
                rest = key[len(prefix) + len(".conv.") :]
                if rest.startswith("kernel_transforms."):
                    mapping[key] = f"{theirs}.conv.{rest.split('.')[1]}_matrix"
                else:
                    mapping[key] = f"{theirs}.conv{inner}.{rest}"
            elif key.startswith(prefix + ".bn."):
                mapping[key] = f"{theirs}.bn{inner_bn}.{key[len(prefix) + len('.bn.') :]}"

    conv_bn("stem", "first_conv", nested=False)
    conv_bn("first_block.depthwise", "blocks.0.conv.depth_conv", nested=False)
    conv_bn("first_block.project", "blocks.0.conv.point_linear", nested=False)
    for plan in block_plan(net.config):
        ours_prefix = f"stages.{plan.stage}.{plan.index}"
        theirs = f"blocks.{plan.slot + 1}.conv"
        conv_bn(f"{ours_prefix}.expand", f"{theirs}.inverted_bottleneck", nested=True)
        conv_bn(f"{ours_prefix}.depthwise", f"{theirs}.depth_conv", nested=True)
        conv_bn(f"{ours_prefix}.project", f"{theirs}.point_linear", nested=True)
        for part in ("reduce", "expand"):
            for tensor in ("weight", "bias"):
                key = f"{ours_prefix}.se.{part}.{tensor}"
                if key in ours:
                    mapping[key] = f"{theirs}.depth_conv.se.fc.{part}.{tensor}"
    conv_bn("final_expand", "final_expand_layer", nested=False)
    mapping["feature_mix.conv.weight"] = "feature_mix_layer.conv.weight"
    mapping["classifier.weight"] = "classifier.linear.weight"
    mapping["classifier.bias"] = "classifier.linear.bias"
    unmapped = sorted(set(ours) - set(mapping))
    if unmapped:  # a family change this mapping does not know yet
        raise NotImplementedError(f"no reference name for {unmapped[:5]}")
    return mapping


def reference_keys(net: OFAMBConvNet) -> dict[str, str]:
    """Our state-dict key -> the key the authors' code uses for the same tensor."""
    if not isinstance(net, OFAMBConvNet):
        raise TypeError(f"no reference mapping for {type(net).__name__} yet")
    return _mbv3_keys(net)


def _state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"no reference checkpoint at {path}")
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
    return {k.removeprefix("module."): v for k, v in data.items()}  # DataParallel saves


def load_reference_checkpoint(path: str | os.PathLike, name: str, **overrides) -> OFAMBConvNet:
    """Our supernet holding the weights of a checkpoint saved by the authors' code.

    ``name`` is their name (``ofa_mbv3_d234_e346_k357_w1.0``) or ours (``ofa_mbv3_w1.0``);
    the number of classes is read from the checkpoint. Missing or unexpected keys and
    wrong shapes are refused, listed by name.
    """
    name = REFERENCE_NAMES.get(name, name)
    if name not in REFERENCE_NAMES.values():
        known = ", ".join(f"{k} ({v})" for k, v in REFERENCE_NAMES.items())
        raise ValueError(f"no reference mapping for {name!r}; known: {known}")
    theirs = _state_dict(Path(path))
    classifier = theirs.get("classifier.linear.weight")
    if classifier is None:
        raise ReferenceCheckpointError(
            f"{path} has no 'classifier.linear.weight': not an OFA-MobileNetV3 checkpoint"
        )
    net = create_supernet(name, num_classes=classifier.shape[0], **overrides)
    mapping = reference_keys(net)
    expected = set(mapping.values())
    missing = sorted(expected - set(theirs))
    unexpected = sorted(set(theirs) - expected)
    own = net.state_dict()
    wrong = [
        f"{k}: file {tuple(theirs[k].shape)}, {name} {tuple(own[o].shape)}"
        for o, k in mapping.items()
        if k in theirs and theirs[k].shape != own[o].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {', '.join(missing[:8])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:8])}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {'; '.join(wrong[:5])}")
    if problems:
        raise ReferenceCheckpointError(f"{path} does not fit {name}: " + " | ".join(problems))
    net.load_state_dict({o: theirs[k] for o, k in mapping.items()})
    return net.eval()


def import_reference(
    path: str | os.PathLike, name: str, run_dir: str | os.PathLike, config: str = "imagenet"
) -> Path:
    """Write a run directory holding the authors' supernet, so that ``ofa acc-dataset``,
    ``specialize`` and ``export`` work on it as on a supernet trained here. ``config``
    (a preset or YAML file) supplies the data settings (resolutions, splits)."""
    import yaml

    from .checkpoint import save_checkpoint
    from .training import load_config

    net = load_reference_checkpoint(path, name)
    settings = load_config(config, supernet=REFERENCE_NAMES.get(name, name))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(settings.to_dict()))
    state = {"model": net.state_dict(), "stage": f"reference:{Path(path).name}"}
    save_checkpoint(run_dir / "supernet", "supernet", state, keep=1)
    return run_dir
