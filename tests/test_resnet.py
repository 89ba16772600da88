"""The OFA-ResNet50 family: arch parsing and space, exact extraction, channel sorting,
costs. Properties are checked over many random archs and resolutions (hypothesis), on a
supernet whose BN affine parameters are random and whose running statistics are estimated
from random images (so that the logits depend on the input)."""

from __future__ import annotations

import copy
import itertools
import json
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import onceforall
from onceforall import ArchError
from onceforall.arch import ResNetArch, ResNetSpace
from onceforall.models.resnet import OFAResNet, ResNetConfig, ResNetSubnet, bottleneck_plan
from onceforall.nn.layers import Bottleneck, DeepStem
from tests.conftest import estimate_bn_statistics, randomize

# The authors' resolutions (128..224) plus small ones, where odd feature-map sizes make the
# ceil-mode average pool of the shortcuts cut windows at the border. The costlier tests
# stay at the smaller ones (runtime grows with r^2); test_reference_resnet.py covers
# 128..224 against the authors' network and FLOP counts.
RESOLUTIONS = tuple(range(32, 225, 4))
SPACE = ResNetConfig(resolutions=RESOLUTIONS).space


def examples(n: int) -> settings:
    return settings(
        max_examples=n, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )


def resnet_archs(space: ResNetSpace, max_r: int = 224) -> st.SearchStrategy[ResNetArch]:
    """Any architecture of ``space`` up to resolution ``max_r`` (skipped slots carry any
    allowed ratio)."""
    n = space.num_slots
    return st.builds(
        ResNetArch,
        d=st.tuples(
            st.sampled_from(space.stem_depth_choices),
            *[st.sampled_from(space.depths) for _ in range(space.num_stages)],
        ),
        e=st.lists(st.sampled_from(space.expand_ratios), min_size=n, max_size=n).map(tuple),
        w=st.lists(
            st.integers(0, len(space.width_mults) - 1),
            min_size=space.num_widths,
            max_size=space.num_widths,
        ).map(tuple),
        r=st.sampled_from([r for r in space.resolutions if r <= max_r]),
    )


@torch.no_grad()
def with_data_statistics(net: OFAResNet, seed: int) -> OFAResNet:
    """Random BN affine parameters (``randomize``), He fan-out conv weights and running
    statistics estimated from random images through the largest sub-network."""
    torch.manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            module.weight.normal_(0, (2.0 / fan_out) ** 0.5)
    randomize(net, seed)
    net.set_largest()
    estimate_bn_statistics(net, 64, torch.Generator().manual_seed(seed), batch=4)
    return net


@pytest.fixture(scope="module")
def resnet() -> OFAResNet:
    net = onceforall.create_supernet("ofa_resnet50", num_classes=10, resolutions=RESOLUTIONS)
    return with_data_statistics(net, seed=1)


@pytest.fixture(scope="module")
def sorted_resnet(resnet) -> OFAResNet:
    net = copy.deepcopy(resnet)
    net.sort_channels()
    return net


def _input(arch: ResNetArch, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, arch.r, arch.r, generator=gen)


PLAIN = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.Linear,
    nn.ReLU,
    nn.Dropout,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.Sequential,
    nn.ModuleList,
    nn.Identity,
    onceforall.nn.layers.ConvBNAct,
    Bottleneck,
    DeepStem,
    ResNetSubnet,
)


# ------------------------------------------------------------------ extraction
@examples(20)
@given(arch=resnet_archs(SPACE))
def test_extracted_net_matches_supernet_in_eval(resnet, arch: ResNetArch) -> None:
    resnet.set_active(arch)
    subnet = resnet.extract(arch).eval()
    x = _input(arch)
    with torch.no_grad():
        expected = resnet(x)
        got = subnet(x)
    assert got.shape == (2, 10)
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * scale)
    # the logits depend on the input (the comparison is not of two constants)
    assert (expected[0] - expected[1]).abs().max() > 1e-3 * scale
    assert all(isinstance(m, PLAIN) for m in subnet.modules())
    # the extracted network is a copy
    with torch.no_grad():
        next(subnet.parameters()).add_(1.0)
        torch.testing.assert_close(resnet(x), expected, rtol=0, atol=0)


@examples(2)
@given(arch=resnet_archs(SPACE, max_r=64), seed=st.integers(0, 2**16))
def test_gradients_of_active_weights_match_in_train_mode(resnet, arch, seed) -> None:
    supernet = copy.deepcopy(resnet).train()
    supernet.set_active(arch)
    subnet = supernet.extract(arch).train()
    x = _input(arch, batch=2, seed=seed)
    target = torch.randint(0, 10, (2,), generator=torch.Generator().manual_seed(seed))
    for model in (supernet, subnet):
        torch.manual_seed(seed)  # same dropout mask in both
        nn.functional.cross_entropy(model(x), target).backward()
    full = dict(supernet.named_parameters())
    for name, param in subnet.named_parameters():
        active = full[name].grad[tuple(slice(0, n) for n in param.shape)]
        torch.testing.assert_close(active, param.grad, rtol=1e-4, atol=1e-6)
        # inactive channels get no gradient
        assert float(full[name].grad.abs().sum()) == pytest.approx(
            float(active.abs().sum()), rel=1e-5
        )
    if not SPACE.stem_block_runs(arch):
        assert all(p.grad is None for p in supernet.stem.residual.parameters())
    for stage in range(SPACE.num_stages):
        for block in supernet.stages[stage][SPACE.stage_depth(arch, stage) :]:
            assert all(p.grad is None for p in block.parameters())


@examples(4)
@given(arch=resnet_archs(SPACE, max_r=128))
def test_extracted_net_rebuilds_from_its_spec(resnet, arch: ResNetArch) -> None:
    subnet = resnet.extract(arch).eval()
    spec = json.loads(json.dumps(subnet.spec()))  # JSON-serialisable
    assert spec["family"] == "resnet"
    rebuilt = onceforall.build_subnet(spec).eval()
    rebuilt.load_state_dict(subnet.state_dict())
    x = _input(arch, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), subnet(x), rtol=0, atol=0)


# ------------------------------------------------------------------- costs
@examples(15)
@given(arch=resnet_archs(SPACE, max_r=128))
def test_macs_and_params_equal_an_independent_count(resnet, arch: ResNetArch) -> None:
    subnet = resnet.extract(arch).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        subnet(_input(arch, batch=1))
    assert resnet.macs(arch) * 2 == counter.get_total_flops()
    assert resnet.params(arch) == sum(p.numel() for p in subnet.parameters())


def test_known_sizes_and_orderings() -> None:
    net = onceforall.create_supernet("ofa_resnet50")
    largest, smallest = net.space.largest(224), net.space.smallest(224)
    assert net.params(largest) == sum(p.numel() for p in net.parameters())  # all of it
    assert net.params(largest) == 48_105_992  # the supernet itself, 1000 classes
    assert net.macs(largest) == 7_491_643_904
    assert net.macs(smallest) < net.macs(largest) / 4
    # a sub-network of the space is a standard ResNet-50D (d 1 per stage, e 0.25, w 1.0)
    resnet50d = {"d": [2, 1, 2, 2, 1], "e": 0.25, "w": 2, "r": 224}
    assert 4.2e9 < net.macs(resnet50d) < 4.4e9
    assert 25.0e6 < net.params(resnet50d) < 25.7e6


def test_cost_parts_are_refused_with_a_reason() -> None:
    net = onceforall.create_supernet("ofa_resnet50", num_classes=10)
    with pytest.raises(NotImplementedError, match="only for MBConv"):
        net.cost_parts(224)


# ---------------------------------------------------------------- channel sort
@examples(8)
@given(arch=resnet_archs(SPACE, max_r=128))
def test_channel_sorting_preserves_every_full_width_subnet(
    resnet, sorted_resnet, arch: ResNetArch
) -> None:
    # Sorting happens while every block runs its full hidden width: largest expand
    # ratio at the largest width of its stage. Depth, stem widths and resolution are free.
    full = len(SPACE.width_mults) - 1
    arch = ResNetArch(
        d=arch.d,
        e=(max(SPACE.expand_ratios),) * SPACE.num_slots,
        w=arch.w[:2] + (full,) * SPACE.num_stages,
        r=arch.r,
    )
    x = _input(arch)
    resnet.set_active(arch)
    sorted_resnet.set_active(arch)
    with torch.no_grad():
        before, after = resnet(x), sorted_resnet(x)
    # Same function; the permuted sums round differently (about 1e-6 of the logits'
    # scale, up to a few 1e-5 through the deepest networks).
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4 * before.abs().max().item())


def test_channel_sorting_orders_by_importance(resnet, sorted_resnet) -> None:
    for (_, block), (_, original) in zip(sorted_resnet.blocks(), resnet.blocks()):
        for conv in (block.conv3.conv, block.conv2.conv):
            importance = conv.weight.abs().sum(dim=(0, 2, 3))
            assert torch.all(importance[:-1] >= importance[1:])
        assert not torch.equal(block.conv1.conv.weight, original.conv1.conv.weight)
        # input and output channels are not touched
        torch.testing.assert_close(
            block.conv1.conv.weight.abs().sum((0, 2, 3)),
            original.conv1.conv.weight.abs().sum((0, 2, 3)),
        )
        assert torch.equal(block.conv3.bn.weight, original.conv3.bn.weight)


# ------------------------------------------------------------------ arch space
def test_arch_round_trips_and_canonical_form() -> None:
    arch = SPACE.sample(3)
    assert SPACE.parse(arch) == arch
    assert SPACE.parse(arch.to_dict()) == arch
    assert SPACE.parse(arch.to_json()) == arch
    assert hash(SPACE.parse(arch.to_json())) == hash(arch)
    assert arch.to_dict()["r"] == [arch.r]
    small = {"d": [0, 0, 0, 0, 0], "e": [0.2] * 18, "w": [0] * 6, "r": 128}
    canonical = SPACE.canonical(small)
    assert canonical.e == (0.2, 0.2, 0.0, 0.0) * 2 + (0.2,) * 4 + (0.0,) * 2 + (0.2, 0.2, 0, 0)
    other = dict(small, e=[0.2, 0.2, 7, -1] * 2 + [0.2] * 4 + [0, 0.35] + [0.2, 0.2, 0, 0])
    assert SPACE.canonical(other) == canonical  # skipped slots carry anything
    # single values stand for every position, as in the authors' set_active_subnet
    assert SPACE.parse({"d": 2, "e": 0.35, "w": 2, "r": 224}) == SPACE.largest(224)
    # resolution: "image_size" (their encoder's key) or none (the largest)
    assert SPACE.parse({"d": 0, "e": 0.2, "w": 0, "image_size": 32}) == SPACE.smallest()
    assert SPACE.parse({"d": 2, "e": 0.35, "w": 2}).r == 224
    # numpy scalars and ints for ratios
    parsed = SPACE.parse(
        {
            "d": np.array([2, 1, 0, 1, 2]).tolist(),
            "e": [np.float64(0.25)] * 18,
            "w": [np.int64(1)] * 6,
            "r": np.int64(160),
        }
    )
    assert parsed.e == (0.25,) * 18 and parsed.w == (1,) * 6 and parsed.r == 160


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"d": [1, 0, 0, 0, 0]},
            r"d\[0\] = 1 is not allowed.*runs \(2\) or is skipped \(0\); "
            r"allowed: 0, 2",
        ),
        ({"d": [2, 0, 3, 0, 0]}, r"d\[2\] = 3 is not an allowed depth .*allowed: 0, 1, 2"),
        ({"d": [2, 0, 0, 0]}, r"d has 4 entries; expected 5"),
        ({"d": [2, 0, 0.5, 0, 0]}, r"d\[2\] = 0.5 must be an int"),
        (
            {"e": [0.25] * 5 + [0.3] + [0.25] * 12},
            r"e\[5\] = 0.3 is not an allowed expand ratio; allowed: 0.2, 0.25, 0.35",
        ),
        ({"e": [0.25] * 17}, r"e has 17 entries; expected 18"),
        ({"e": [0.25] * 3 + ["x"] + [0.25] * 14}, r"e\[3\] = 'x' must be a number"),
        (
            {"w": [0, 1, 2, 3, 0, 0]},
            r"w\[3\] = 3 is not an allowed width index; allowed: 0, 1, 2 \(indices into width "
            r"multipliers 0.65, 0.8, 1.0\)",
        ),
        ({"w": [0, 1, True, 0, 0, 0]}, r"w\[2\] = True must be an int"),
        ({"r": [130]}, r"r = 130 is not an allowed resolution; allowed: 32 to 224 in steps of 4"),
        ({"r": [128, 132]}, r"exactly one resolution"),
        ({"image_size": 160}, r"r = 224 and image_size = 160 disagree"),
        ({"ks": [3] * 18}, r"unknown key\(s\) 'ks'"),
    ],
)
def test_parse_errors_name_field_index_and_allowed_values(change, message) -> None:
    arch = {**SPACE.largest().to_dict(), **change}
    with pytest.raises(ArchError, match=message):
        SPACE.parse(arch)


def test_parse_refuses_other_shapes_of_input() -> None:
    with pytest.raises(ArchError, match=r"missing key\(s\) 'w'"):
        SPACE.parse({"d": 2, "e": 0.35})
    with pytest.raises(ArchError, match="not valid JSON"):
        SPACE.parse("{d: 2")
    with pytest.raises(ArchError, match="must be a dict"):
        SPACE.parse([1, 2])
    # an MBConv arch is not a ResNet arch, and the supernet says so
    net = onceforall.create_supernet("ofa_resnet50", num_classes=10)
    mbv3 = onceforall.create_supernet("ofa_mbv3_w1.0").space.largest()
    with pytest.raises(ArchError, match="unknown key"):
        net.set_active(mbv3.to_dict())


def test_sample_largest_smallest_and_encoding() -> None:
    rng = random.Random(0)
    archs = [SPACE.sample(rng) for _ in range(200)]
    assert all(SPACE.parse(a) == a for a in archs)
    assert {a.d[0] for a in archs} == {0, 2}
    assert SPACE.sample(5) == SPACE.sample(5)
    largest, smallest = SPACE.largest(), SPACE.smallest()
    assert largest.d == (2,) * 5 and largest.w == (2,) * 6 and largest.r == 224
    assert smallest.d == (0,) * 5 and smallest.e == (0.2,) * 18 and smallest.r == 32
    assert SPACE.num_slots == 18 and SPACE.num_widths == 6
    assert SPACE.encoding_size == len(RESOLUTIONS) + 2 + 4 * 3 + 18 * 3 + 6 * 3
    layout = SPACE.encoding_layout()
    assert layout["type"] == "resnet-onehot"
    assert layout["type"] != onceforall.MBConvSpace().encoding_layout()["type"]
    json.dumps(layout)
    seen: dict[bytes, ResNetArch] = {}
    for arch in archs:
        feature = SPACE.encode(arch)
        assert feature.dtype == np.float32 and feature.shape == (SPACE.encoding_size,)
        active = len(SPACE.active_slots(arch))
        assert feature.sum() == 1 + 1 + 4 + active + 6
        canonical = SPACE.canonical(arch)
        assert seen.setdefault(feature.tobytes(), canonical) == canonical  # injective
        np.testing.assert_array_equal(SPACE.encode(canonical), feature)


def test_num_subnets_counts_distinct_archs_exactly() -> None:
    tiny = ResNetSpace(
        expand_ratios=(0.2, 0.25),
        depths=(0, 1),
        width_mults=(0.5, 1.0),
        base_depths=(1, 2),
        resolutions=(32, 36),
    )
    distinct = set()
    for d in itertools.product(tiny.stem_depth_choices, *[tiny.depths] * tiny.num_stages):
        for e in itertools.product(tiny.expand_ratios, repeat=tiny.num_slots):
            for w in itertools.product(range(2), repeat=tiny.num_widths):
                for r in tiny.resolutions:
                    distinct.add(tiny.canonical(ResNetArch(d=d, e=e, w=w, r=r)))
    assert tiny.num_subnets() == len(distinct)
    assert tiny.num_subnets(with_resolution=False) * 2 == len(distinct)
    # the authors' space: 2 x 3 x 3 (stem) x prod over stages of 3 x sum_d 3^(base + d)
    stages = [3 * sum(3 ** (b + d) for d in (0, 1, 2)) for b in (2, 2, 4, 2)]
    assert ResNetConfig().space.num_subnets(False) == 18 * int(np.prod(stages))


# ------------------------------------------------------------------- registry
def test_registry_and_config_overrides() -> None:
    assert "ofa_resnet50" in onceforall.list_supernets()
    net = onceforall.create_supernet(
        "ofa_resnet50",
        num_classes=7,
        expand_ratios=[0.25, 0.35],
        depths=[1, 2],
        width_mults=[0.8, 1.0],
        resolutions=[32, 40],
    )
    assert net.space.expand_ratios == (0.25, 0.35) and net.space.width_mults == (0.8, 1.0)
    assert net.space.smallest().d == (1,) * 5
    net.eval()
    assert net(torch.randn(1, 3, 40, 40)).shape == (1, 7)
    config = net.config
    assert ResNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    # the authors' channel counts
    default = ResNetConfig()
    assert default.stem_mid_choices == (24, 24, 32)
    assert default.stem_out_choices == (40, 48, 64)
    assert default.width_choices(2048) == (1328, 1640, 2048)


# ------------------------------------------------------------ the authors' dicts
def test_the_authors_arch_dicts_parse_unchanged_and_mean_the_same_network() -> None:
    networks = pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks")
    encoders = pytest.importorskip("ofa.nas.accuracy_predictor.arch_encoder")
    space = ResNetConfig().space
    theirs = networks.OFAResNets(
        n_classes=10,
        dropout_rate=0,
        depth_list=[0, 1, 2],
        expand_ratio_list=[0.2, 0.25, 0.35],
        width_mult_list=[0.65, 0.8, 1.0],
    )
    encoder = encoders.ResNetArchEncoder(image_size_list=list(space.resolutions))
    random.seed(0)
    for _ in range(30):
        sampled = theirs.sample_active_subnet()  # {"d", "e", "w"}: no resolution
        kept = copy.deepcopy(sampled)
        arch = space.parse(sampled)
        assert sampled == kept  # not modified
        assert (list(arch.d), list(arch.e), list(arch.w)) == (kept["d"], kept["e"], kept["w"])
        assert arch.r == 224
        # their active network has our shapes: stem, then every running block
        config = theirs.get_active_net_config()
        stem = config["input_stem"]
        assert (len(stem) == 3) == space.stem_block_runs(arch)
        assert stem[0]["out_channels"] == ResNetConfig().stem_mid_choices[arch.w[0]]
        assert stem[-1]["out_channels"] == ResNetConfig().stem_out_choices[arch.w[1]]
        ours = [
            (p.in_channels(arch), p.mid_channels(arch), p.out_channels(arch), p.stride)
            for p in bottleneck_plan(ResNetConfig())
            if p.index < space.stage_depth(arch, p.stage)
        ]
        assert ours == [
            (b["in_channels"], b["mid_channels"], b["out_channels"], b["stride"])
            for b in config["blocks"]
        ]

        encoded = encoder.random_sample_arch()  # {"d", "e", "w", "image_size"}
        kept = copy.deepcopy(encoded)
        arch = space.parse(encoded)
        assert encoded == kept and arch.r == kept["image_size"]
        # their decoder writes skipped slots as 0: the same arch up to canonical form
        decoded = encoder.feature2arch(encoder.arch2feature(encoded))
        assert space.canonical(decoded) == space.canonical(arch)
