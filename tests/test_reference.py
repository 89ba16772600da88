"""Differential tests against the authors' package (``ofa`` from PyPI): a checkpoint of
their supernet, loaded into ours, computes the same logits for random sub-networks."""

from __future__ import annotations

import random

import pytest
import torch

from onceforall.arch import ArchError
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
dynamic_op = pytest.importorskip("ofa.imagenet_classification.elastic_nn.modules.dynamic_op")
ofa_utils = pytest.importorskip("ofa.utils")


# Their name -> (our registry name, their class, width multiplier).
FAMILIES = {
    "ofa_mbv3_d234_e346_k357_w1.0": ("ofa_mbv3_w1.0", "OFAMobileNetV3", 1.0),
    "ofa_mbv3_d234_e346_k357_w1.2": ("ofa_mbv3_w1.2", "OFAMobileNetV3", 1.2),
    "ofa_proxyless_d234_e346_k357_w1.3": ("ofa_proxyless_w1.3", "OFAProxylessNASNets", 1.3),
}


def _reference_supernet(their_name: str, num_classes: int, seed: int) -> torch.nn.Module:
    """Their supernet, with every BN statistic, affine and kernel-transform matrix
    randomised so that equality cannot hold by accident of initialisation."""
    _, cls, width = FAMILIES[their_name]
    torch.manual_seed(seed)
    dynamic_op.DynamicSeparableConv2d.KERNEL_TRANSFORM_MODE = 1  # register the matrices
    net = getattr(networks, cls)(
        n_classes=num_classes,
        dropout_rate=0.0,
        width_mult=width,
        ks_list=[3, 5, 7],
        expand_ratio_list=[3, 4, 6],
        depth_list=[2, 3, 4],
    )
    ofa_utils.init_models(net, "he_fout")  # their training init: signals reach the head
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith(("bn.bias", "bn.bn.bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
            elif name.endswith(("bn.weight", "bn.bn.weight")):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith("_matrix"):
                size = tensor.shape[0]
                tensor.copy_(torch.eye(size) + torch.randn(size, size, generator=gen) * 0.1)
    net.set_max_net()
    estimate_bn_statistics(net, 160, gen)
    return net


def _their_sample(reference: torch.nn.Module, rng: random.Random) -> dict:
    """An arch dict exactly as their sampler writes it, at a random resolution."""
    state = random.getstate()
    random.seed(rng.random())
    try:
        arch = reference.sample_active_subnet()
    finally:
        random.setstate(state)
    return {**arch, "r": [rng.choice(range(128, 225, 4))]}


# One supernet in the default run; the other two (about 15 s each) in `make test-slow`.
SLOW_LOGITS = ("ofa_mbv3_d234_e346_k357_w1.2", "ofa_proxyless_d234_e346_k357_w1.3")


@pytest.mark.parametrize(
    "their_name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_LOGITS else n for n in sorted(FAMILIES)],
)
def test_reference_checkpoint_gives_the_same_logits(tmp_path, their_name) -> None:
    reference = _reference_supernet(their_name, num_classes=10, seed=3)
    path = tmp_path / "ofa.pth"
    torch.save({"state_dict": reference.state_dict()}, path)  # their checkpoint layout
    ours = load_reference_checkpoint(path, their_name, resolutions=list(range(128, 225, 4)))
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    for i in range(20):
        theirs = _their_sample(reference, rng)  # their dict, loaded unchanged
        reference.set_active_subnet(ks=theirs["ks"], e=theirs["e"], d=theirs["d"])
        if i > 0:  # statistics recalibrated for this sub-network, as before evaluating it
            estimate_bn_statistics(reference, theirs["r"][0], gen)
            torch.save({"state_dict": reference.state_dict()}, path)
            ours = load_reference_checkpoint(path, their_name)
        arch = ours.set_active(theirs)
        x = torch.randn(2, 3, arch.r, arch.r, generator=gen)
        with torch.no_grad():
            want, got = reference(x), ours(x)
        scale = want.abs().max().item()
        assert (got - want).abs().max().item() <= 1e-4 * scale, arch
        # The part of the logits that depends on the input agrees too (it is small next to
        # the part the biases set, so it gets its own check).
        signal = want[0] - want[1]
        assert signal.abs().max() > 1e-3 * scale
        assert ((got[0] - got[1]) - signal).abs().max() <= 1e-3 * signal.abs().max(), arch


@pytest.mark.parametrize("their_name", sorted(FAMILIES))
def test_mapping_covers_their_state_dict_exactly(their_name) -> None:
    from onceforall import create_supernet

    reference = _reference_supernet(their_name, num_classes=7, seed=0)
    mapping = reference_keys(create_supernet(FAMILIES[their_name][0], num_classes=7))
    assert set(mapping.values()) == set(reference.state_dict())


def test_bad_reference_checkpoints_are_refused_by_name(tmp_path) -> None:
    reference = _reference_supernet("ofa_mbv3_d234_e346_k357_w1.0", num_classes=10, seed=0)
    state = reference.state_dict()
    del state["blocks.3.conv.point_linear.bn.bn.weight"]
    state["blocks.99.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(
        ReferenceCheckpointError, match=r"missing keys \(1\): blocks\.3.*unexpected keys \(1\)"
    ):
        load_reference_checkpoint(tmp_path / "bad.pth", "ofa_mbv3_d234_e346_k357_w1.0")
    # A w1.0 checkpoint is not a w1.2 supernet: shapes are named.
    torch.save(reference.state_dict(), tmp_path / "w10.pth")
    with pytest.raises(ReferenceCheckpointError, match="shape mismatch"):
        load_reference_checkpoint(tmp_path / "w10.pth", "ofa_mbv3_d234_e346_k357_w1.2")
    with pytest.raises(ValueError, match="no reference mapping"):
        load_reference_checkpoint(tmp_path / "w10.pth", "ofa_densenet")
    # An MBConv checkpoint is not an OFA-ResNet50.
    with pytest.raises(ReferenceCheckpointError, match="not an OFA-ResNet50 checkpoint"):
        load_reference_checkpoint(tmp_path / "w10.pth", "ofa_resnet50")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ReferenceCheckpointError, match="weights-only"):
        load_reference_checkpoint(tmp_path / "junk.pth", "ofa_mbv3_w1.0")


def test_import_reference_makes_a_run_directory(tmp_path) -> None:
    from onceforall.cli import main
    from onceforall.training import load_run

    reference = _reference_supernet("ofa_mbv3_d234_e346_k357_w1.0", num_classes=10, seed=5)
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "ofa.pth")
    args = ["import-reference", str(tmp_path / "ofa.pth"), "--out", str(tmp_path / "run")]
    assert main([*args, "--name", "ofa_mbv3_d234_e346_k357_w1.0"]) == 0
    config, ours = load_run(tmp_path / "run")
    assert config.supernet == "ofa_mbv3_w1.0"
    arch = ours.space.largest(160)
    ours.set_active(arch)
    reference.set_max_net()
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        want, got = reference(x), ours(x)
    assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()


@pytest.mark.parametrize("their_name", sorted(FAMILIES))
def test_macs_equal_the_reference_count(their_name) -> None:
    """Our analytic MACs against the authors' own count of the same sub-networks."""
    from onceforall import create_supernet

    table = pytest.importorskip("ofa.nas.efficiency_predictor.latency_lookup_table")
    counter = {
        "OFAMobileNetV3": table.MBv3LatencyTable,
        "OFAProxylessNASNets": table.ProxylessNASLatencyTable,
    }[FAMILIES[their_name][1]]
    reference = _reference_supernet(their_name, num_classes=1000, seed=0)
    ours = create_supernet(FAMILIES[their_name][0], num_classes=1000)
    rng = random.Random(7)
    for _ in range(20):
        theirs = _their_sample(reference, rng)
        reference.set_active_subnet(ks=theirs["ks"], e=theirs["e"], d=theirs["d"])
        config = reference.get_active_net_config()
        mflops = counter.count_flops_given_config(config, theirs["r"][0])
        assert ours.macs(theirs) == round(mflops * 1e6), theirs


@pytest.mark.parametrize("their_name", sorted(FAMILIES))
def test_arch_dicts_of_their_encoder_and_search_load_unchanged(their_name) -> None:
    """Their accuracy-predictor encoder and ``ofa.nas`` search write ``image_size``
    instead of ``r``, and 0 for skipped slots: such dicts parse as they are and run the
    network their sampler's dict describes."""
    from onceforall import create_supernet

    arch_encoder = pytest.importorskip("ofa.nas.accuracy_predictor.arch_encoder")
    proxyless = "proxyless" in their_name
    encoder_class = type(
        "Encoder",
        (arch_encoder.MobileNetArchEncoder,),
        {"SPACE_TYPE": "mbv2" if proxyless else "mbv3"},
    )
    encoder = encoder_class(image_size_list=list(range(128, 225, 4)), n_stage=6 if proxyless else 5)
    space = create_supernet(FAMILIES[their_name][0]).space
    random.seed(0)
    for _ in range(50):
        sampled = encoder.random_sample_arch()
        decoded = encoder.feature2arch(encoder.arch2feature(sampled))
        assert space.parse(decoded) == space.canonical(sampled), decoded
    with pytest.raises(ArchError, match="both 'r' and 'image_size'"):
        space.parse({**sampled, "r": [128]})
