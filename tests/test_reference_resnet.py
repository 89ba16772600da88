"""Differential tests of OFA-ResNet50 against the authors' package (``ofa`` from PyPI): a
checkpoint of their supernet, loaded into ours, computes the same logits for sub-networks
drawn by their sampler at random resolutions; their channel sort and ours agree; our
analytic MACs and parameter counts equal their own counts."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from onceforall import create_supernet
from onceforall.compat.checkpoints import (
    ReferenceCheckpointError,
    load_reference_checkpoint,
    reference_keys,
)
from tests.conftest import estimate_bn_statistics

networks = pytest.importorskip(
    "ofa.imagenet_classification.elastic_nn.networks",
    reason="the authors' package is not installed (pip install -e '.[reference]')",
)
ofa_utils = pytest.importorskip("ofa.utils")

RESOLUTIONS = list(range(128, 225, 4))


@torch.no_grad()
def _reference_resnet(num_classes: int, seed: int) -> torch.nn.Module:
    """Their OFA-ResNet50 (the model zoo's settings), with He fan-out conv weights (their
    training init), random BN affine parameters and running statistics estimated from
    random images through the largest sub-network, so that the logits depend on the input
    (a fresh init gives nearly input-independent logits)."""
    torch.manual_seed(seed)
    net = networks.OFAResNets(
        n_classes=num_classes,
        dropout_rate=0,
        depth_list=[0, 1, 2],
        expand_ratio_list=[0.2, 0.25, 0.35],
        width_mult_list=[0.65, 0.8, 1.0],
    )
    ofa_utils.init_models(net, "he_fout")
    gen = torch.Generator().manual_seed(seed + 1)
    for name, tensor in net.state_dict().items():
        if name.endswith("bn.bn.bias"):
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
        elif name.endswith("bn.bn.weight"):
            tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
        elif name.endswith("linear.linear.bias"):
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
    net.set_max_net()
    estimate_bn_statistics(net, 128, gen, batch=4)
    return net


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    return _reference_resnet(num_classes=10, seed=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, reference):
    path = tmp_path_factory.mktemp("ofa") / "ofa_resnet50.pth"
    torch.save({"state_dict": reference.state_dict()}, path)  # their checkpoint layout
    return path


def _their_archs(reference, n: int, seed: int) -> list[dict]:
    """Arch dicts from their own sampler, each with a random resolution."""
    random.seed(seed)
    archs = []
    for _ in range(n):
        arch = reference.sample_active_subnet()  # {"d", "e", "w"}, no resolution
        arch["image_size"] = random.choice(RESOLUTIONS)
        archs.append(arch)
    return archs


def test_reference_checkpoint_gives_the_same_logits(reference, checkpoint) -> None:
    ours = load_reference_checkpoint(checkpoint, "ofa_resnet50")
    assert ours.config.num_classes == 10 and not ours.training
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for arch in _their_archs(reference, 20, seed=0):
        r = arch["image_size"]
        x = torch.randn(2, 3, r, r, generator=gen)
        reference.set_active_subnet(d=arch["d"], e=arch["e"], w=arch["w"])
        ours.set_active(arch)  # their dict, unchanged
        with torch.no_grad():
            want, got = reference(x), ours(x)
        scale = want.abs().max().item()
        worst = max(worst, (got - want).abs().max().item() / scale)
        assert (got - want).abs().max().item() <= 1e-4 * scale, arch
        # the input-dependent part of the logits agrees too
        signal = want[0] - want[1]
        assert signal.abs().max() > 1e-2 * scale
        assert ((got[0] - got[1]) - signal).abs().max() <= 1e-3 * signal.abs().max(), arch
    print(f"largest logit difference / logit scale over 20 archs: {worst:.2e}")


def test_their_extracted_subnet_equals_ours(reference, checkpoint) -> None:
    ours = load_reference_checkpoint(checkpoint, "ofa_resnet50")
    for arch in _their_archs(reference, 2, seed=1):
        r = arch["image_size"]
        reference.set_active_subnet(d=arch["d"], e=arch["e"], w=arch["w"])
        theirs = reference.get_active_subnet().eval()
        mine = ours.extract(arch).eval()
        x = torch.randn(1, 3, r, r)
        with torch.no_grad():
            want, got = theirs(x), mine(x)
        assert (got - want).abs().max() <= 1e-4 * want.abs().max(), arch
        assert sum(p.numel() for p in theirs.parameters()) == ours.params(arch)


def test_channel_sorting_agrees_with_theirs(reference, checkpoint) -> None:
    ours = load_reference_checkpoint(checkpoint, "ofa_resnet50")
    theirs = copy.deepcopy(reference)
    theirs.re_organize_middle_weights()
    ours.sort_channels()
    # after sorting, the sub-networks with smaller hidden widths keep the same channels
    for arch in _their_archs(reference, 3, seed=2):
        r = arch["image_size"]
        x = torch.randn(2, 3, r, r)
        theirs.set_active_subnet(d=arch["d"], e=arch["e"], w=arch["w"])
        ours.set_active(arch)
        with torch.no_grad():
            want, got = theirs(x), ours(x)
        assert (got - want).abs().max() <= 1e-4 * want.abs().max(), arch


def test_mapping_covers_their_state_dict_exactly(reference) -> None:
    mapping = reference_keys(create_supernet("ofa_resnet50", num_classes=10))
    assert set(mapping.values()) == set(reference.state_dict())
    assert len(set(mapping.values())) == len(mapping)


def test_their_flat_key_names_load_too(reference, checkpoint, tmp_path) -> None:
    # Their OFAResNets.load_state_dict also accepts checkpoints whose elastic layers are
    # not nested ("bn.weight" for "bn.bn.weight", "conv.weight" for "conv.conv.weight",
    # ".linear." for ".linear.linear."), which is how their released file may be named.
    flat = {
        k.replace("bn.bn.", "bn.")
        .replace("conv.conv.weight", "conv.weight")
        .replace(".linear.linear.", ".linear."): v
        for k, v in reference.state_dict().items()
    }
    assert len(flat) == len(reference.state_dict())
    torch.save({"state_dict": flat}, tmp_path / "flat.pth")
    nested = load_reference_checkpoint(checkpoint, "ofa_resnet50").state_dict()
    loaded = load_reference_checkpoint(tmp_path / "flat.pth", "ofa_resnet50").state_dict()
    assert all(torch.equal(loaded[k], nested[k]) for k in nested)


def test_bad_checkpoints_are_refused_by_name(reference, tmp_path) -> None:
    state = reference.state_dict()
    del state["blocks.5.conv2.bn.bn.running_var"]
    state["blocks.99.conv1.conv.conv.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(
        ReferenceCheckpointError,
        match=(
            r"missing keys \(1\): blocks\.5\.conv2\.bn\.bn\.running_var"
            r".*unexpected keys \(1\): blocks\.99"
        ),
    ):
        load_reference_checkpoint(tmp_path / "bad.pth", "ofa_resnet50")
    state = reference.state_dict()
    state["blocks.3.conv1.conv.conv.weight"] = torch.zeros(64, 256, 1, 1)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(
        ReferenceCheckpointError, match=r"shape mismatch.*blocks\.3\.conv1\.conv\.conv\.weight"
    ):
        load_reference_checkpoint(tmp_path / "shape.pth", "ofa_resnet50")
    # an OFA-MobileNetV3 checkpoint is not an OFA-ResNet50 one, and vice versa
    other = {  # the first and last tensors of their OFA-MobileNetV3
        "first_conv.conv.weight": torch.zeros(16, 3, 3, 3),
        "classifier.linear.weight": torch.zeros(10, 1280),
    }
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(ReferenceCheckpointError, match="not an OFA-ResNet50 checkpoint"):
        load_reference_checkpoint(tmp_path / "other.pth", "ofa_resnet50")
    torch.save(reference.state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ReferenceCheckpointError):
        load_reference_checkpoint(tmp_path / "resnet.pth", "ofa_mbv3_w1.0")


def test_macs_and_params_equal_the_reference_counts() -> None:
    """Our analytic MACs against the authors' own FLOPs formula for ResNets
    (``ResNet50LatencyTable.count_flops_given_config``, which counts multiply-accumulates
    of convs and the classifier, as we do: exactly equal), and against their module
    profiler (``ofa.utils.flops_counter.profile``) on their extracted sub-network, which
    counts the same but accumulates in float32 (equal to float32 rounding); parameters
    exactly equal their extracted sub-network's."""
    table = pytest.importorskip("ofa.nas.efficiency_predictor.latency_lookup_table")
    flops_counter = pytest.importorskip("ofa.utils.flops_counter")
    reference = _reference_resnet(num_classes=1000, seed=0)
    ours = create_supernet("ofa_resnet50", num_classes=1000)
    archs = _their_archs(reference, 20, seed=7)
    archs.append({"d": 2, "e": 0.35, "w": 2, "image_size": 224})  # the largest
    for i, arch in enumerate(archs):
        r = arch["image_size"]
        reference.set_active_subnet(d=arch["d"], e=arch["e"], w=arch["w"])
        mflops = table.ResNet50LatencyTable.count_flops_given_config(
            reference.get_active_net_config(), r
        )
        assert ours.macs(arch) == round(mflops * 1e6), arch
        if i < 3 or i == len(archs) - 1:
            subnet = reference.get_active_subnet()
            assert ours.params(arch) == sum(p.numel() for p in subnet.parameters()), arch
            ops, params = flops_counter.profile(subnet, (1, 3, r, r))
            assert ours.macs(arch) == pytest.approx(ops, rel=1e-6), arch
            assert ours.params(arch) == pytest.approx(params, rel=1e-6), arch
    assert ours.params(ours.space.largest()) == sum(p.numel() for p in reference.parameters())


def test_import_reference_makes_a_resnet_run_directory(checkpoint, tmp_path) -> None:
    """``ofa import-reference`` for the ResNet writes a run whose config is the ResNet
    preset (its stages open the ResNet's choices), so the run loads and trains on."""
    from onceforall.cli import main
    from onceforall.training import load_run
    from onceforall.training.schedule import stage_space

    args = ["import-reference", str(checkpoint), "--name", "ofa_resnet50"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    config, ours = load_run(tmp_path / "run")
    assert config.supernet == "ofa_resnet50"
    for stage in config.stages:
        stage_space(ours.space, stage)  # every stage opens choices the supernet has
    reference = load_reference_checkpoint(checkpoint, "ofa_resnet50")
    x = torch.randn(1, 3, 128, 128)
    ours.set_active(ours.space.largest(128))
    reference.set_active(reference.space.largest(128))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)
