"""The authors' specialised sub-networks (``net.config`` JSON + weights) as our exports.

Their model zoo ships each specialised network as a ``net.config`` (the layer-by-layer
JSON their ``MobileNetV3`` / ``ProxylessNASNets`` / ``ResNets`` classes write) and an
``init`` weights file. :func:`subnet_from_net_config` reads the JSON back into an arch of
one of our supernets (kernel size, expand ratio, depth and width per stage are recovered
from the blocks; every layer's channels, stride, activation and SE are checked against
our table), and
:func:`import_reference_subnet` loads the weights by name and writes an ordinary export
directory (safetensors, ONNX checked with onnxruntime, metadata), the same format
``ofa export`` writes. Weights are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from ..arch import Arch
from ..deploy.export import ExportResult, write_export
from ..errors import InputNotFoundError
from ..models import supernet_config
from ..models.mbconv import MBConvNetConfig, MBConvSubnet, OFAMBConvNet, block_plan
from ..models.resnet import OFAResNet, ResNetSubnet
from ..nn.elastic_resnet import bottleneck_mid_channels
from ..nn.layers import make_divisible
from .checkpoints import (
    NetConfigError,
    conv_bn_keys,
    load_mapped,
    mbconv_block_keys,
    mbconv_head_keys,
    read_state_dict,
)

__all__ = [
    "NetConfigError",
    "import_reference_subnet",
    "load_reference_subnet",
    "subnet_from_net_config",
    "subnet_keys",
]

# Their class name in net.config -> our registered supernets it may come from.
_FAMILIES = {
    "MobileNetV3": ("ofa_mbv3_w1.0", "ofa_mbv3_w1.2"),
    "ProxylessNASNets": ("ofa_proxyless_w1.3",),
    "ResNets": ("ofa_resnet50",),
}
_DEFAULT_RESOLUTIONS = tuple(range(128, 225, 4))


def _block_conv(block: Mapping[str, Any]) -> Mapping[str, Any]:
    conv = block.get("conv", block.get("mobile_inverted_conv"))  # older releases
    if not isinstance(conv, Mapping):
        raise NetConfigError(f"block {block.get('name')!r} has no 'conv' layer config")
    return conv


def _supernet_config(net_config: Mapping[str, Any], supernet: str, resolution: int) -> Any:
    """Our config of ``supernet`` with the classes, dropout and BN settings of their
    ``net_config``, and ``resolution`` among its resolutions."""
    classifier = net_config["classifier"]
    bn = net_config.get("bn") or {}
    return supernet_config(
        supernet,
        num_classes=int(classifier["out_features"]),
        dropout=float(classifier.get("dropout_rate") or 0.0),
        bn_eps=float(bn.get("eps") or 1e-5),
        bn_momentum=float(bn.get("momentum") or 0.1),  # None (cumulative) only in calibration
        resolutions=tuple(sorted(set(_DEFAULT_RESOLUTIONS) | {resolution})),
    )


def _match_config(net_config: Mapping[str, Any], supernet: str, resolution: int) -> MBConvNetConfig:
    """Our config of ``supernet`` with the classes, dropout and BN of ``net_config``, if
    its stem, first block and head widths agree; else :class:`NetConfigError`."""
    config = _supernet_config(net_config, supernet, resolution)
    first_block = _block_conv(net_config["blocks"][0])
    head = net_config["final_expand_layer" if config.head_width else "feature_mix_layer"]
    checks = {
        "first_conv out_channels": (
            net_config["first_conv"]["out_channels"],
            config.channels(config.stem_width),
        ),
        "first block out_channels": (
            first_block["out_channels"],
            config.channels(config.first_block_width),
        ),
        "head out_channels": (head["out_channels"], config.channels(config.final_expand_width)),
    }
    wrong = [
        f"{name} {got} (expected {want})" for name, (got, want) in checks.items() if got != want
    ]
    if wrong:
        raise NetConfigError(f"not {supernet}: " + ", ".join(wrong))
    return config


def _recover_arch(
    net_config: Mapping[str, Any], config: MBConvNetConfig, supernet: str, resolution: int
) -> Arch:
    """Kernel sizes, expand ratios and stage depths from the elastic blocks, each
    block checked against the slot it lands in."""
    space = config.space
    blocks = [_block_conv(b) for b in net_config["blocks"][1:]]
    ks, e = [0] * space.num_slots, [0] * space.num_slots
    depths = [0] * space.num_stages
    position = 0
    for plan in block_plan(config):
        if position < len(blocks) and plan.index == depths[plan.stage]:
            conv = blocks[position]
            opens_stage = plan.index == 0
            if conv["out_channels"] != plan.out_channels and not opens_stage:
                continue  # the stage ended; the block belongs to the next one
            problems = _block_problems(conv, plan, config)
            if problems:
                raise NetConfigError(
                    f"block {position + 1} does not fit stage {plan.stage} of {supernet}: "
                    + "; ".join(problems)
                )
            ks[plan.slot] = int(conv["kernel_size"])
            e[plan.slot] = _expand_ratio(conv, plan.in_channels, config)
            depths[plan.stage] += 1
            position += 1
    if position != len(blocks):
        raise NetConfigError(
            f"{len(blocks) - position} block(s) after block {position} fit no stage "
            f"(stage depths so far {depths})"
        )
    return space.parse({"ks": ks, "e": e, "d": depths, "r": [resolution]})


def _block_problems(conv: Mapping[str, Any], plan, config: MBConvNetConfig) -> list[str]:
    want = {
        "in_channels": plan.in_channels,
        "out_channels": plan.out_channels,
        "stride": plan.stride,
        "act_func": plan.act,
        "use_se": plan.se,
    }
    problems = [
        f"{k} {conv.get(k)!r} (expected {v!r})" for k, v in want.items() if conv.get(k) != v
    ]
    if conv.get("kernel_size") not in config.kernel_sizes:
        problems.append(f"kernel_size {conv.get('kernel_size')!r} not in {config.kernel_sizes}")
    if (conv.get("groups") or 1) != 1:
        problems.append(f"groups {conv.get('groups')} (only 1 is supported)")
    return problems


def _expand_ratio(conv: Mapping[str, Any], in_channels: int, config: MBConvNetConfig) -> int:
    ratio = conv.get("expand_ratio")
    mid = conv.get("mid_channels")
    for e in config.expand_ratios:
        width = make_divisible(round(in_channels * e))
        if (mid is not None and mid == width) or (mid is None and ratio == e):
            return e
    raise NetConfigError(
        f"expand_ratio {ratio!r} / mid_channels {mid!r} of a block with {in_channels} inputs "
        f"is none of the expand ratios {config.expand_ratios}"
    )


def _index(value: Any, choices: tuple, what: str) -> int:
    if value not in choices:
        raise NetConfigError(f"{what} {value!r} is none of {list(choices)}")
    return choices.index(value)


def _resnet_subnet(net_config: Mapping[str, Any], supernet: str, resolution: int) -> ResNetSubnet:
    """An OFA-ResNet sub-network from their ``ResNets`` config: the stem's widths and
    whether its residual block runs, then the bottlenecks grouped into stages (a block
    whose input and output widths differ opens a stage), each checked against our
    table."""
    config = _supernet_config(net_config, supernet, resolution)
    space = config.space
    stem = net_config["input_stem"]
    if len(stem) not in (2, 3):
        raise NetConfigError(f"input_stem has {len(stem)} layers; expected 2 or 3")
    w = [
        _index(stem[0]["out_channels"], config.stem_mid_choices, "input_stem[0] out_channels"),
        _index(stem[-1]["out_channels"], config.stem_out_choices, "input_stem[-1] out_channels"),
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
        w.append(_index(width, config.width_choices(row.width), f"stage {s} out_channels"))
        extra = len(blocks) - row.base_depth
        d.append(space.depths[_index(extra, space.depths, f"stage {s} extra depth")])
        mids = {bottleneck_mid_channels(width, r): r for r in space.expand_ratios}
        for slot, block in zip(space.stage_slots(s), blocks):
            mid = block["mid_channels"]
            _index(mid, tuple(mids), f"stage {s} mid_channels")
            e[slot] = mids[mid]
    arch = space.parse({"d": d, "e": e, "w": w, "r": [resolution]})
    subnet = ResNetSubnet(config, arch)
    expected_in = [block.conv1.conv.in_channels for stage in subnet.stages for block in stage]
    given_in = [b["in_channels"] for b in net_config["blocks"]]
    if expected_in != given_in:
        raise NetConfigError(f"block input widths {given_in} differ from ours {expected_in}")
    return subnet


def subnet_from_net_config(
    net_config: Mapping[str, Any] | str | os.PathLike, resolution: int
) -> tuple[str, MBConvSubnet | ResNetSubnet]:
    """(our supernet name, an uninitialised static network) for the authors' specialised
    ``net_config`` (a dict or a path to the JSON) run at ``resolution``. Their JSON does
    not record the input size: their model zoo lists it with each net (``image_size`` in
    its ``run.config``)."""
    if not isinstance(net_config, Mapping):
        path = Path(net_config)
        if not path.is_file():
            raise InputNotFoundError(f"no net.config at {path}")
        try:
            net_config = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise NetConfigError(f"{path} is not JSON: {exc}") from None
    name = net_config.get("name")
    if name not in _FAMILIES:
        raise NetConfigError(f"net.config describes a {name!r}; supported: {', '.join(_FAMILIES)}")
    failures = []
    for supernet in _FAMILIES[name]:
        try:
            if name == "ResNets":
                return supernet, _resnet_subnet(net_config, supernet, resolution)
            config = _match_config(net_config, supernet, resolution)
            arch = _recover_arch(net_config, config, supernet, resolution)
        except NetConfigError as exc:
            failures.append(str(exc))
            continue
        except (KeyError, TypeError, IndexError) as exc:
            raise NetConfigError(f"net.config lacks or misstates a field: {exc!r}") from None
        return supernet, MBConvSubnet(config, arch)
    raise NetConfigError(
        f"the {name} net.config fits none of our supernets: " + " | ".join(failures)
    )


def _resnet_subnet_keys(subnet: ResNetSubnet) -> dict[str, str]:
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


def subnet_keys(subnet: MBConvSubnet | ResNetSubnet) -> dict[str, str]:
    """Our sub-network's state-dict keys -> their static network's (blocks numbered
    consecutively over the blocks that run)."""
    if isinstance(subnet, ResNetSubnet):
        return _resnet_subnet_keys(subnet)
    ours = list(subnet.state_dict())
    mapping = mbconv_head_keys(ours, subnet.config)
    number = 1
    for stage, blocks in enumerate(subnet.stages):
        for index in range(len(blocks)):
            prefix = f"stages.{stage}.{index}"
            mapping.update(mbconv_block_keys(ours, prefix, f"blocks.{number}.conv", False))
            number += 1
    return mapping


def load_reference_subnet(
    config_path: str | os.PathLike, weights_path: str | os.PathLike, resolution: int
) -> tuple[str, MBConvSubnet | ResNetSubnet]:
    """Their specialised network as our static network, weights loaded, in eval mode."""
    supernet, subnet = subnet_from_net_config(config_path, resolution)
    theirs = read_state_dict(Path(weights_path))
    load_mapped(
        subnet,
        theirs,
        subnet_keys(subnet),
        f"{weights_path} does not fit the network of {config_path}",
    )
    return supernet, subnet.eval()


def import_reference_subnet(
    config_path: str | os.PathLike,
    weights_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    resolution: int,
    *,
    onnx: bool = True,
    threads: int | None = None,
) -> ExportResult:
    """Write the authors' specialised network as an export directory of ours (loadable
    with :func:`onceforall.deploy.export.load_exported`, ONNX checked). BN statistics are kept
    as they are in the file (no recalibration); accuracy is not measured here."""
    supernet_name, subnet = load_reference_subnet(config_path, weights_path, resolution)
    costs = (OFAResNet if isinstance(subnet, ResNetSubnet) else OFAMBConvNet)(subnet.config)
    return write_export(
        subnet,
        out_dir,
        macs=costs.macs(subnet.arch),
        params=costs.params(subnet.arch),
        supernet_name=supernet_name,
        onnx=onnx,
        threads=threads,
        extra_metadata={
            "source": "reference specialised net",
            "source_files": {"net_config": str(config_path), "weights": str(weights_path)},
        },
    )
