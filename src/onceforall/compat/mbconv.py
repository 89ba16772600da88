"""How the authors' package stores the MBConv family (OFA-MobileNetV3, OFA-ProxylessNAS).

Their supernets number their blocks (``blocks.0`` is the fixed first block, ``blocks.1..``
the elastic slots) and nest each elastic conv and BN one level deeper; ours name stages.
The mapping is derived from our table-driven block plan, so it covers every width
multiplier. Their specialised nets' ``net.config`` is read back into an arch: kernel size,
expand ratio and depth per stage from the blocks, each block checked against our table.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ..arch import MBConvArch
from ..models.mbconv import MBConvNetConfig, MBConvSubnet, OFAMBConvNet, block_plan
from ..nn.layers import make_divisible
from .base import NetConfigError, ReferenceFormat, block_conv, conv_bn_keys

__all__ = ["MBCONV_REFERENCE", "mbconv_block_keys", "mbconv_head_keys"]


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


def _supernet_keys(net: OFAMBConvNet) -> dict[str, str]:
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


def _subnet_keys(subnet: MBConvSubnet) -> dict[str, str]:
    """Our sub-network's keys -> their static network's (blocks numbered consecutively
    over the blocks that run)."""
    ours = list(subnet.state_dict())
    mapping = mbconv_head_keys(ours, subnet.config)
    number = 1
    for stage, blocks in enumerate(subnet.stages):
        for index in range(len(blocks)):
            prefix = f"stages.{stage}.{index}"
            mapping.update(mbconv_block_keys(ours, prefix, f"blocks.{number}.conv", False))
            number += 1
    return mapping


def _check_fixed_parts(
    net_config: Mapping[str, Any], config: MBConvNetConfig, supernet: str
) -> None:
    """:class:`NetConfigError` unless the stem, first block and head widths of
    ``net_config`` are those of ``config`` (our ``supernet``)."""
    first_block = block_conv(net_config["blocks"][0])
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


def _recover_arch(
    net_config: Mapping[str, Any], config: MBConvNetConfig, supernet: str, resolution: int
) -> MBConvArch:
    """Kernel sizes, expand ratios and stage depths from the elastic blocks, each
    block checked against the slot it lands in."""
    space = config.space
    blocks = [block_conv(b) for b in net_config["blocks"][1:]]
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


def _subnet_from_net_config(
    net_config: Mapping[str, Any], config: MBConvNetConfig, supernet: str, resolution: int
) -> MBConvSubnet:
    _check_fixed_parts(net_config, config, supernet)
    return MBConvSubnet(config, _recover_arch(net_config, config, supernet, resolution))


MBCONV_REFERENCE = ReferenceFormat(
    description="OFA-MobileNetV3 or OFA-ProxylessNAS",
    required=(("classifier.linear.weight",),),
    classifier=("classifier.linear.weight",),
    supernet_keys=_supernet_keys,
    subnet_keys=_subnet_keys,
    net_configs={
        "MobileNetV3": ("ofa_mbv3_w1.0", "ofa_mbv3_w1.2"),
        "ProxylessNASNets": ("ofa_proxyless_w1.3",),
    },
    subnet_from_net_config=_subnet_from_net_config,
)
