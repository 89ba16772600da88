"""Exactness of the elastic supernet: extraction, gradients, channel sorting, costs.

Every property is checked over many random architectures and resolutions (hypothesis),
on supernets whose BN statistics and kernel-transform matrices are random, not identity.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import onceforall
from onceforall import Arch, ArchError
from onceforall.nn.elastic_mbconv import ElasticDepthwiseConv2d
from tests.conftest import archs

SPACE = onceforall.create_supernet("ofa_mbv3_w1.0").space


def examples(n: int) -> settings:
    return settings(
        max_examples=n, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )


PLAIN_LAYERS = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.Linear,
    nn.ReLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Dropout,
    nn.Sequential,
    nn.ModuleList,
    nn.Identity,
)


@pytest.fixture(scope="module", params=["mbv3", "proxyless"])
def family(request) -> onceforall.Supernet:
    """Each MBConv family in turn (OFA-MobileNetV3 w1.0, OFA-ProxylessNAS w1.3), with
    random BN statistics and kernel transforms."""
    return request.getfixturevalue(request.param)


def _input(arch: Arch, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, arch.r, arch.r, generator=gen)


@examples(30)
@given(data=st.data())
def test_extracted_net_matches_supernet_in_eval(family, data) -> None:
    mbv3 = family
    arch = data.draw(archs(mbv3.space))
    mbv3.eval()
    mbv3.set_active(arch)
    subnet = mbv3.extract(arch).eval()
    x = _input(arch)
    with torch.no_grad():
        expected = mbv3(x)
        got = subnet(x)
    assert got.shape == (2, 10)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # The extracted net is an ordinary network: plain layers, no elastic ones.
    from onceforall.nn.layers import ConvBNAct, MBConv, SqueezeExcite

    allowed = (*PLAIN_LAYERS, nn.ReLU6, ConvBNAct, MBConv, SqueezeExcite, type(subnet))
    assert all(isinstance(m, allowed) for m in subnet.modules())
    # and a copy: changing it leaves the supernet untouched
    with torch.no_grad():
        next(subnet.parameters()).add_(1.0)
    with torch.no_grad():
        torch.testing.assert_close(mbv3(x), expected, rtol=0, atol=0)


@examples(10)
@given(arch=archs(SPACE))
def test_wider_supernet_extracts_exactly(mbv3_w12, arch: Arch) -> None:
    mbv3_w12.eval().set_active(arch)
    x = _input(arch, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(mbv3_w12.extract(arch).eval()(x), mbv3_w12(x), rtol=0, atol=1e-5)


@examples(5)
@given(data=st.data())
def test_extracted_net_has_the_supernets_type(family, data) -> None:
    # ... and its device (tests/test_cuda.py, on a GPU): a float64 supernet gives a
    # float64 network that computes what it computes, not a float32 copy.
    arch = data.draw(archs(family.space))
    supernet = copy.deepcopy(family).double().eval()
    supernet.set_active(arch)
    x = _input(arch).double()
    subnet = supernet.extract(arch).eval()
    assert {p.dtype for p in subnet.parameters()} == {torch.float64}
    with torch.no_grad():
        torch.testing.assert_close(subnet(x), supernet(x), rtol=0, atol=1e-12)


@examples(8)
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_gradients_of_active_weights_match_in_train_mode(family, data, seed: int) -> None:
    arch = data.draw(archs(family.space))
    supernet = copy.deepcopy(family).train()
    supernet.set_active(arch)
    subnet = supernet.extract(arch).train()
    x = _input(arch, batch=4, seed=seed)
    target = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(seed))
    for model in (supernet, subnet):
        torch.manual_seed(seed)  # same dropout mask in both
        nn.functional.cross_entropy(model(x), target).backward()

    super_params = dict(supernet.named_parameters())
    checked = 0
    for name, param in subnet.named_parameters():
        grad = param.grad
        if name.endswith("depthwise.conv.weight") and not name.startswith("first_block"):
            # The extracted kernel is computed from the 7x7 weight and the transform
            # matrices: push its gradient back through that computation.
            stage, index = (int(p) for p in name.split(".")[1:3])
            dw: ElasticDepthwiseConv2d = supernet.stages[stage][index].depthwise.conv
            slot = supernet.space.stage_slots(stage)[index]
            mid = param.shape[0]
            sources = [dw.weight, *dw.kernel_transforms.values()]
            kernel = dw.kernel(arch.ks[slot], mid)
            expected = torch.autograd.grad(kernel, sources, [grad], allow_unused=True)
            for source, exp in zip(sources, expected):
                if exp is None:  # a transform this kernel size does not use
                    assert source.grad is None
                else:
                    torch.testing.assert_close(source.grad, exp, rtol=1e-4, atol=1e-6)
        else:
            full = super_params[name].grad
            active = full[tuple(slice(0, n) for n in grad.shape)]
            torch.testing.assert_close(active, grad, rtol=1e-4, atol=1e-6)
            # inactive channels of the supernet get no gradient
            assert float(full.abs().sum()) == pytest.approx(float(active.abs().sum()), rel=1e-6)
        checked += 1
    assert checked == len(list(subnet.parameters()))
    # blocks that depth skips get no gradient at all
    for stage, depth in enumerate(arch.d):
        for block in supernet.stages[stage][depth:]:
            assert all(p.grad is None for p in block.parameters())


@examples(15)
@given(data=st.data())
def test_channel_sorting_preserves_every_largest_width_subnet(family, data) -> None:
    # Sorting happens before the expand-ratio stages, while every block runs at its
    # largest expand ratio; kernel size, depth and resolution are free.
    arch = data.draw(archs(family.space))
    arch = Arch(ks=arch.ks, e=(6,) * len(arch.e), d=arch.d, r=arch.r)
    supernet = copy.deepcopy(family).eval()
    x = _input(arch)
    supernet.set_active(arch)
    with torch.no_grad():
        before = supernet(x)
        supernet.sort_channels()
        after = supernet(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_channel_sorting_orders_by_importance_and_changes_weights(mbv3) -> None:
    supernet = copy.deepcopy(mbv3)
    block = supernet.stages[1][0]  # a block with squeeze-excite
    before = block.expand.conv.weight.clone()
    supernet.sort_channels()
    importance = block.project.conv.weight.abs().sum(dim=(0, 2, 3))
    assert torch.all(importance[:-1] >= importance[1:])
    se_importance = block.se.expand.weight.abs().sum(dim=(0, 2, 3))
    assert torch.all(se_importance[:-1] >= se_importance[1:])
    assert not torch.equal(before, block.expand.conv.weight)


@examples(25)
@given(data=st.data())
def test_macs_and_params_equal_an_independent_count(family, data) -> None:
    mbv3 = family
    arch = data.draw(archs(mbv3.space))
    subnet = mbv3.extract(arch).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        subnet(_input(arch, batch=1))
    assert mbv3.macs(arch) * 2 == counter.get_total_flops()
    assert mbv3.params(arch) == sum(p.numel() for p in subnet.parameters())


def test_proxyless_space_matches_the_authors_layout() -> None:
    net = onceforall.create_supernet("ofa_proxyless_w1.3")
    space = net.space
    assert (space.num_slots, space.num_stages) == (21, 6)
    assert space.stage_depth_choices(5) == (1,)
    # Their sampler writes d[5] = 1, their encoder's samples any depth: both mean 1.
    largest = space.largest(224).to_dict()
    for depth in (1, 2, 4):
        assert space.parse({**largest, "d": [4] * 5 + [depth]}).d[5] == 1
    with pytest.raises(ArchError, match=r"d\[5\] = 5 is not an allowed depth; allowed: 1"):
        space.parse({**largest, "d": [4] * 5 + [5]})
    assert net.first_block.shortcut is False and net.feature_mix is None
    assert [net.config.channels(w) for w in (32, 16, 24, 40, 80, 96, 192, 320, 1280)] == [
        40,
        24,
        32,
        56,
        104,
        128,
        248,
        416,
        1664,
    ]


def test_known_sizes_of_the_largest_and_smallest_subnets() -> None:
    net = onceforall.create_supernet("ofa_mbv3_w1.0")
    largest, smallest = net.space.largest(224), net.space.smallest(224)
    assert net.params(largest) == 7_664_760
    assert net.macs(largest) == 566_170_656
    assert net.macs(smallest) < net.macs(largest) / 4
    # MACs grow with resolution roughly quadratically
    assert net.macs(net.space.largest(128)) < net.macs(largest) * (128 / 224) ** 2 * 1.05


def test_kernel_transform_starts_as_centre_crop() -> None:
    dw = ElasticDepthwiseConv2d(8, (3, 5, 7))
    w = dw.weight
    torch.testing.assert_close(dw.kernel(5), w[:, :, 1:6, 1:6], rtol=0, atol=0)
    torch.testing.assert_close(dw.kernel(3), w[:, :, 2:5, 2:5], rtol=0, atol=0)
    torch.testing.assert_close(dw.kernel(3, 4), w[:4, :, 2:5, 2:5], rtol=0, atol=0)
    assert set(dw.kernel_transforms) == {"7to5", "5to3"}


def test_set_active_rejects_invalid_arch_with_a_clear_error(mbv3) -> None:
    bad = mbv3.space.largest().to_dict()
    bad["ks"][5] = 4
    with pytest.raises(ArchError, match=r"ks\[5\] = 4 is not an allowed kernel size"):
        mbv3.set_active(bad)
    with pytest.raises(ArchError):
        mbv3.extract({**bad, "ks": [7] * 20, "r": [130]})
    with pytest.raises(ArchError):
        mbv3.macs({"ks": [7] * 20, "e": [6] * 20, "d": [4] * 5})


def test_registry() -> None:
    assert {"ofa_mbv3_w1.0", "ofa_mbv3_w1.2"} <= set(onceforall.list_supernets())
    with pytest.raises(onceforall.UnknownNameError, match="unknown supernet 'nope'; known: "):
        onceforall.create_supernet("nope")
    with pytest.raises(onceforall.ConfigError, match="has no setting"):
        onceforall.create_supernet("ofa_mbv3_w1.0", colour="red")
    net = onceforall.create_supernet("ofa_mbv3_w1.0", num_classes=10, resolutions=[24, 28, 32])
    assert net.space.resolutions == (24, 28, 32)
    net.eval()
    assert net(torch.randn(1, 3, 28, 28)).shape == (1, 10)


@examples(5)
@given(data=st.data())
def test_extracted_net_rebuilds_from_its_spec(family, data) -> None:
    arch = data.draw(archs(family.space))
    subnet = family.extract(arch).eval()
    rebuilt = onceforall.build_subnet(subnet.spec()).eval()
    rebuilt.load_state_dict(subnet.state_dict())
    x = _input(arch, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), subnet(x), rtol=0, atol=0)


@examples(6)
@given(data=st.data())
def test_channels_last_supernet_computes_the_same(family, data) -> None:
    # The training loop runs channels_last on CPU (much faster there); slicing must
    # respect non-default strides.
    arch = data.draw(archs(family.space))
    supernet = copy.deepcopy(family).eval()
    supernet.set_active(arch)
    x = _input(arch)
    with torch.no_grad():
        expected = supernet(x)
        supernet.to(memory_format=torch.channels_last)
        got = supernet(x.contiguous(memory_format=torch.channels_last))
        subnet = supernet.extract(arch).eval()
        from_subnet = subnet(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(from_subnet, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["ofa_mbv3_w1.0", "ofa_proxyless_w1.3", "ofa_resnet50"])
def test_zero_init_residual_makes_exactly_the_identity_shortcut_blocks_identities(name) -> None:
    """After ``zero_init_residual`` every block with an identity shortcut passes its input
    through unchanged (in training mode too), and no other block does."""
    torch.manual_seed(0)
    net = onceforall.create_supernet(name, num_classes=10).train()
    blocks = [block for _, block in net.blocks()]
    if hasattr(net, "first_block"):
        blocks.insert(0, net.first_block)
    seen: dict[int, bool] = {}

    def record(module, inputs, output) -> None:
        seen[id(module)] = inputs[0].shape == output.shape and torch.equal(inputs[0], output)

    for block in blocks:
        block.register_forward_hook(record)
    x = torch.randn(4, 3, 64, 64)
    net(x)
    assert not any(seen.values())  # PyTorch's init: no block is an identity
    count = net.zero_init_residual()
    net(x)
    identities = [block for block in blocks if seen[id(block)]]
    assert count == len(identities) > 0
    assert {id(n) for n in net.residual_norms()} == {
        id(b.project.bn if hasattr(b, "project") else b.conv3.bn) for b in identities
    }
