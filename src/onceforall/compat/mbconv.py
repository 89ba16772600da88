"""How the authors' package stores the MBConv family (OFA-MobileNetV3, OFA-ProxylessNAS).

Their supernets number their blocks (``blocks.0`` is the fixed first block, ``blocks.1..``
the elastic slots) and nest each elastic conv and BN one level deeper; ours name stages.
The mapping is derived from our table-driven block plan, so it covers every width
multiplier. Their specialised nets' ``net.config`` is read back into an arch: kernel size,
expand ratio and depth per stage from the blocks, each block checked against our table.
Their tutorial's accuracy predictor encodes an OFA-MobileNetV3 arch in 128 features, and
their latency lookup tables name every layer by its shapes: both are written here from
our block plan (:data:`TUTORIAL_PREDICTOR`, :func:`latency_table_keys`).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from ..arch import MBConvArch, MBConvSpace
from ..models.costs import conv_output_size
from ..models.mbconv import MBConvNetConfig, MBConvSubnet, OFAMBConvNet, block_plan
from ..nn.layers import make_divisible
from .base import (
    AuthorsPredictorFormat,
    NetConfigError,
    ReferenceFormat,
    block_conv,
    conv_bn_keys,
)

__all__ = [
    "MBCONV_REFERENCE",
    "TUTORIAL_PREDICTOR",
    "latency_table_keys",
    "mbconv_block_keys",
    "mbconv_head_keys",
]


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


# ---------------------------------------------------------- their tutorial's predictor
_BUCKET_START, _BUCKET, _BUCKETS = 112, 16, 8  # their resolution one-hot: (r - 112) // 16


def _tutorial_features(space: MBConvSpace, genes: np.ndarray) -> np.ndarray:
    """Their tutorial encoding of gene rows of an OFA-MobileNetV3 space (20 slots, k in
    3, 5, 7 and e in 3, 4, 6, in that order, as their maps number them): one-hot kernel
    size of every slot (60), one-hot expand ratio of every slot (60), both all zero
    where depth skips the slot, then the resolution's bucket of 16 from 112 (8)."""
    layout = space.genome()
    n, s = len(genes), layout.n_slots
    active = layout.active(genes).astype(np.float32)
    out = np.zeros((n, 6 * s + _BUCKETS), dtype=np.float32)
    rows = np.arange(n)[:, None]
    out[rows, np.arange(s) * 3 + genes[:, :s]] = active
    out[rows, 3 * s + np.arange(s) * 3 + genes[:, s : 2 * s]] = active
    r = np.asarray(space.resolutions)[genes[:, -1]]
    out[np.arange(n), 6 * s + (r - _BUCKET_START) // _BUCKET] = 1.0
    return out


def _tutorial_columns(space: MBConvSpace) -> np.ndarray:
    """Their tutorial's column for each column of our one-hot encoding of ``space``
    (resolutions first, then k and e per slot); ``ValueError`` where there is none."""
    if space != MBConvSpace(resolutions=space.resolutions):
        raise ValueError(
            "their tutorial encodes OFA-MobileNetV3 archs (20 block slots, kernel sizes 3, "
            f"5, 7, expand ratios 3, 4, 6, depths 2, 3, 4); this space is {space}"
        )
    r = np.asarray(space.resolutions)
    buckets = (r - _BUCKET_START) // _BUCKET
    if r.min() < _BUCKET_START or buckets.max() >= _BUCKETS or len(set(buckets)) < len(r):
        raise ValueError(
            f"their tutorial encodes a resolution by its bucket of {_BUCKET} from "
            f"{_BUCKET_START} ({_BUCKETS} buckets), so the resolutions a predictor tells "
            f"apart must fall in distinct buckets; these do not: {r.tolist()}"
        )
    s = space.num_slots
    return np.concatenate([6 * s + buckets, np.arange(6 * s)])


TUTORIAL_PREDICTOR = AuthorsPredictorFormat(
    description="the authors' tutorial OFA-MobileNetV3 accuracy predictor",
    layout="sequential",
    supernet="ofa_mbv3_w1.2",
    features=128,
    resolutions=tuple(range(_BUCKET_START, _BUCKET_START + _BUCKET * _BUCKETS)),
    encode=_tutorial_features,
    our_columns=_tutorial_columns,
)


# ------------------------------------------------------------ their latency tables
def _key(kind: str, size_in: str, size_out: str, **block: int) -> str:
    """A layer's key in their lookup tables: its kind, input and output shapes and, for
    an MBConv block, its expand width, kernel, stride, shortcut, SE and h-swish flags."""
    parts = [kind, f"input:{size_in}", f"output:{size_out}"]
    parts += [f"{name}:{value}" for name, value in block.items()]
    return "-".join(parts)


def _block_key(size: int, cin: int, cout: int, mid: int, k: int, stride: int, **flags) -> str:
    out = conv_output_size(size, k, stride)
    return _key(
        "expanded_conv",
        f"{size}x{size}x{cin}",
        f"{out}x{out}x{cout}",
        expand=mid,
        kernel=k,
        stride=stride,
        **flags,
    )


def latency_table_keys(
    config: MBConvNetConfig, r: int
) -> tuple[tuple[str, ...], dict[tuple[int, int, int], str]]:
    """The keys their lookup tables give the layers of ``config`` at resolution ``r``:
    the fixed parts in the order their code adds them (stem, first block, final expand,
    pool, feature mix, classifier), and every (slot, k, e) block. Their format describes
    OFA-MobileNetV3's head (1x1 conv, pool, 1x1 conv, classifier)."""
    if config.head_width is None:
        raise ValueError(
            "the authors' lookup tables describe OFA-MobileNetV3 networks (final expand, "
            "pool, feature mix, classifier); this supernet has no feature-mix layer"
        )
    stem, first = config.channels(config.stem_width), config.channels(config.first_block_width)
    size = conv_output_size(r, 3, 2)
    fixed = [
        _key("Conv", f"{r}x{r}x3", f"{size}x{size}x{stem}"),
        _block_key(
            size,
            stem,
            first,
            stem,
            3,
            1,
            idskip=int(config.first_block_shortcut and stem == first),
            se=0,
            hs=int(config.first_block_act == "h_swish"),
        ),
    ]
    blocks: dict[tuple[int, int, int], str] = {}
    for plan in block_plan(config):
        shortcut = plan.stride == 1 and plan.in_channels == plan.out_channels
        for k in config.kernel_sizes:
            for e in config.expand_ratios:
                blocks[(plan.slot, k, e)] = _block_key(
                    size,
                    plan.in_channels,
                    plan.out_channels,
                    make_divisible(round(plan.in_channels * e)),
                    k,
                    plan.stride,
                    idskip=int(shortcut),
                    se=int(plan.se),
                    hs=int(plan.act == "h_swish"),
                )
        size = conv_output_size(size, 1, plan.stride)
    last = config.channels(config.stages[-1].width)
    final, mix = config.channels(config.final_expand_width), config.channels(config.head_width)
    fixed += [
        _key("Conv_1", f"{size}x{size}x{last}", f"{size}x{size}x{final}"),
        _key("AvgPool2D", f"{size}x{size}x{final}", f"1x1x{final}"),
        _key("Conv_2", f"1x1x{final}", f"1x1x{mix}"),
        _key("Logits", f"1x1x{mix}", str(config.num_classes)),
    ]
    return tuple(fixed), blocks


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
    predictors=(TUTORIAL_PREDICTOR,),
    latency_keys=latency_table_keys,
)
