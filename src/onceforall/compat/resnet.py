"""How the authors' package stores OFA-ResNet50.

Their supernet numbers its bottlenecks ``blocks.0..17`` by slot and calls its deep stem
``input_stem.0..2``; every elastic conv and BN is nested once more, and their loader also
reads the unnested spellings. Their specialised ``ResNets`` net.config is read back into
an arch: the stem's widths and whether its residual block runs, then the bottlenecks
grouped into stages, each checked against our table.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ..arch import ResNetSpace
from ..models.resnet import OFAResNet, ResNetConfig, ResNetSubnet, bottleneck_plan
from ..nn.elastic_resnet import bottleneck_mid_channels
from .base import (
    AuthorsPredictorFormat,
    NetConfigError,
    ReferenceFormat,
    choice_index,
    conv_bn_keys,
)

__all__ = ["PREDICTOR_RESOLUTIONS", "RESNET50_PREDICTOR", "RESNET_REFERENCE"]


def _supernet_keys(net: OFAResNet) -> dict[str, str]:
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


def _subnet_keys(subnet: ResNetSubnet) -> dict[str, str]:
    ours = list(subnet.state_dict())
    mapping = conv_bn_keys(ours, "stem.conv1", "input_stem.0", nested=False)
    mapping.update(conv_bn_keys(ours, "stem.residual", "input_stem.1.conv", nested=False))
    last = 2 if subnet.stem.residual is not None else 1
    mapping.update(conv_bn_keys(ours, "stem.conv2", f"input_stem.{last}", nested=False))
    number = 0
    for stage, blocks in enumerate(subnet.stages):
        for index in range(len(blocks)):
            prefix, theirs = f"stages.{stage}.{index}", f"blocks.{number}"
            for part in ("conv1", "conv2", "conv3"):
                mapping.update(conv_bn_keys(ours, f"{prefix}.{part}", f"{theirs}.{part}", False))
            mapping.update(conv_bn_keys(ours, f"{prefix}.shortcut", f"{theirs}.downsample", False))
            number += 1
    mapping["classifier.weight"] = "classifier.linear.weight"
    mapping["classifier.bias"] = "classifier.linear.bias"
    return mapping


def _subnet_from_net_config(
    net_config: Mapping[str, Any], config: ResNetConfig, supernet: str, resolution: int
) -> ResNetSubnet:
    """An OFA-ResNet sub-network from their ``ResNets`` config: the stem's widths and
    whether its residual block runs, then the bottlenecks grouped into stages (a block
    whose input and output widths differ opens a stage), each checked against our
    table."""
    space = config.space
    stem = net_config["input_stem"]
    if len(stem) not in (2, 3):
        raise NetConfigError(f"input_stem has {len(stem)} layers; expected 2 or 3")
    w = [
        choice_index(
            stem[0]["out_channels"], config.stem_mid_choices, "input_stem[0] out_channels"
        ),
        choice_index(
            stem[-1]["out_channels"], config.stem_out_choices, "input_stem[-1] out_channels"
        ),
    ]
    stem_depth = max(space.depths) if len(stem) == 3 else min(space.depths)
    stages: list[list[Mapping[str, Any]]] = []
    for i, block in enumerate(net_config["blocks"]):
        problems = [
            f"{key} {block.get(key)!r} (expected {want!r})"
            for key, want in (("kernel_size", 3), ("groups", 1), ("act_func", "relu"))
            if block.get(key) != want
        ]
        if problems:
            raise NetConfigError(f"block {i}: " + "; ".join(problems))
        if block["in_channels"] != block["out_channels"] or block["stride"] != 1 or not stages:
            stages.append([])
        stages[-1].append(block)
    if len(stages) != len(config.stages):
        raise NetConfigError(f"the blocks form {len(stages)} stages; expected {len(config.stages)}")
    d, e = [stem_depth], [max(space.expand_ratios)] * space.num_slots
    for s, (blocks, row) in enumerate(zip(stages, config.stages)):
        if blocks[0]["stride"] != row.stride:
            raise NetConfigError(
                f"stage {s} opens with stride {blocks[0]['stride']}, not {row.stride}"
            )
        width = blocks[0]["out_channels"]
        w.append(choice_index(width, config.width_choices(row.width), f"stage {s} out_channels"))
        extra = len(blocks) - row.base_depth
        d.append(space.depths[choice_index(extra, space.depths, f"stage {s} extra depth")])
        mids = {bottleneck_mid_channels(width, r): r for r in space.expand_ratios}
        for slot, block in zip(space.stage_slots(s), blocks):
            mid = block["mid_channels"]
            choice_index(mid, tuple(mids), f"stage {s} mid_channels")
            e[slot] = mids[mid]
    arch = space.parse({"d": d, "e": e, "w": w, "r": [resolution]})
    subnet = ResNetSubnet(config, arch)
    expected_in = [block.conv1.conv.in_channels for stage in subnet.stages for block in stage]
    given_in = [b["in_channels"] for b in net_config["blocks"]]
    if expected_in != given_in:
        raise NetConfigError(f"block input widths {given_in} differ from ours {expected_in}")
    return subnet


# The input sizes their OFA-ResNet50 predictor encodes, in the order of its one-hot (the
# list their code builds its arch encoder with for that predictor).
PREDICTOR_RESOLUTIONS = (128, 144, 160, 176, 192, 224, 240, 256)


def _predictor_features(space: ResNetSpace, genes: np.ndarray) -> np.ndarray:
    """Their ``ResNetArchEncoder`` encoding of gene rows of an OFA-ResNet50 space:
    one-hot resolution (:data:`PREDICTOR_RESOLUTIONS`), whether the stem's residual block
    runs (2), the width index of each of the 6 positions (3 each), the expand ratio of
    each of the 18 block slots (3 each; all zero where depth skips the slot)."""
    genome = space.genome()
    n, t, s = len(genes), space.num_stages, space.num_slots
    n_w = len(space.width_mults)
    width = len(PREDICTOR_RESOLUTIONS) + 2 + space.num_widths * n_w + s * 3
    out = np.zeros((n, width), dtype=np.float32)
    rows = np.arange(n)
    theirs = {r: i for i, r in enumerate(PREDICTOR_RESOLUTIONS)}
    r_col = np.array([theirs[r] for r in space.resolutions], dtype=np.intp)
    out[rows, r_col[genes[:, -1]]] = 1.0
    base = len(PREDICTOR_RESOLUTIONS)
    stem_runs = np.asarray(space.stem_depth_choices)[genes[:, 0]] > 0
    out[rows, base + stem_runs] = 1.0
    base += 2
    w_genes = genes[:, 1 + t + s : -1]
    out[rows[:, None], base + np.arange(space.num_widths) * n_w + w_genes] = 1.0
    base += space.num_widths * n_w
    active = genome.active(genes).astype(np.float32)
    out[rows[:, None], base + np.arange(s) * 3 + genes[:, 1 + t : 1 + t + s]] = active
    return out


RESNET50_PREDICTOR = AuthorsPredictorFormat(
    description="the authors' OFA-ResNet50 accuracy predictor",
    layout="nas",
    supernet="ofa_resnet50",
    features=82,
    resolutions=PREDICTOR_RESOLUTIONS,
    encode=_predictor_features,
)


RESNET_REFERENCE = ReferenceFormat(
    description="OFA-ResNet50",
    # Their nested key names, or the non-nested ones their loader also reads.
    required=(
        ("input_stem.0.conv.conv.weight", "input_stem.0.conv.weight"),
        ("classifier.linear.linear.weight", "classifier.linear.weight"),
    ),
    classifier=("classifier.linear.linear.weight", "classifier.linear.weight"),
    supernet_keys=_supernet_keys,
    subnet_keys=_subnet_keys,
    net_configs={"ResNets": ("ofa_resnet50",)},
    subnet_from_net_config=_subnet_from_net_config,
    normalise=_nest_resnet_keys,
    predictors=(RESNET50_PREDICTOR,),
)
