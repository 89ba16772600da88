"""The authors' specialised sub-networks (their ``net.config`` JSON and weights, as their
model zoo ships them) turned into our export format compute what their network computes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from onceforall.compat.checkpoints import ReferenceCheckpointError
from onceforall.compat.specialized import (
    NetConfigError,
    import_reference_subnet,
    load_reference_subnet,
    subnet_from_net_config,
)
from onceforall.deploy.export import load_exported
from tests.conftest import copy_run, estimate_bn_statistics, needs_fashion_mnist
from tests.test_reference import (
    FAMILIES,
    _reference_supernet,
    _their_sample,
)


def _their_specialised_net(their_name: str, seed: int) -> tuple[dict, torch.nn.Module, dict]:
    """A sub-network of their supernet as their ``get_active_subnet`` builds it, with BN
    statistics estimated for it: (its arch dict, the static network, its net.config)."""
    reference = _reference_supernet(their_name, num_classes=10, seed=seed)
    theirs = _their_sample(reference, random.Random(seed))
    reference.set_active_subnet(ks=theirs["ks"], e=theirs["e"], d=theirs["d"])
    gen = torch.Generator().manual_seed(seed)
    estimate_bn_statistics(reference, theirs["r"][0], gen)
    static = reference.get_active_subnet(preserve_weight=True).eval()
    return theirs, static, json.loads(json.dumps(static.config))


def _save(tmp_path, static: torch.nn.Module, config: dict) -> tuple:
    config_path, weights_path = tmp_path / "net.config", tmp_path / "init"
    config_path.write_text(json.dumps(config, indent=4))
    torch.save({"state_dict": static.state_dict()}, weights_path)  # their model-zoo layout
    return config_path, weights_path


@pytest.mark.parametrize("their_name", sorted(FAMILIES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_their_specialised_net_loads_with_the_same_logits(tmp_path, their_name, seed) -> None:
    theirs, static, config = _their_specialised_net(their_name, seed)
    r = theirs["r"][0]
    supernet, ours = load_reference_subnet(*_save(tmp_path, static, config), resolution=r)
    assert supernet == FAMILIES[their_name][0]
    space = ours.config.space
    assert space.canonical(ours.arch) == space.canonical(theirs)  # the arch is recovered
    x = torch.randn(3, 3, r, r, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want, got = static(x), ours(x)
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= 1e-4 * scale
    signal = want[0] - want[1]  # the input-dependent part agrees too
    assert ((got[0] - got[1]) - signal).abs().max() <= 1e-3 * signal.abs().max()


def test_import_writes_an_export_that_loads_without_their_code(tmp_path, capsys) -> None:
    from onceforall.cli import main

    theirs, static, config = _their_specialised_net("ofa_proxyless_d234_e346_k357_w1.3", 4)
    r = theirs["r"][0]
    paths = [str(p) for p in _save(tmp_path, static, config)]
    out = tmp_path / "out"
    assert main(["import-subnet", *paths, "--resolution", str(r), "--out", str(out)]) == 0
    assert f"exported: {out}" in capsys.readouterr().out
    assert (out / "model.onnx").is_file()  # kept only after onnxruntime agreed
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["supernet"] == "ofa_proxyless_w1.3" and meta["bn_calibration_images"] is None
    loaded = load_exported(tmp_path / "out")
    x = torch.randn(2, 3, r, r)
    with torch.no_grad():
        want = static(x)
        assert (loaded(x) - want).abs().max().item() <= 1e-4 * want.abs().max().item()


def test_configs_that_fit_no_supernet_are_refused_by_name(tmp_path) -> None:
    theirs, static, config = _their_specialised_net("ofa_mbv3_d234_e346_k357_w1.0", 5)
    r = theirs["r"][0]
    bad = json.loads(json.dumps(config))
    bad["blocks"][3]["conv"]["kernel_size"] = 9
    with pytest.raises(NetConfigError, match=r"block 3 does not fit stage .*kernel_size 9"):
        subnet_from_net_config(bad, r)
    bad = json.loads(json.dumps(config))
    bad["blocks"][2]["conv"]["mid_channels"] = 100
    with pytest.raises(NetConfigError, match="mid_channels 100"):
        subnet_from_net_config(bad, r)
    with pytest.raises(NetConfigError, match="'DenseNet'; supported: MobileNetV3"):
        subnet_from_net_config({**config, "name": "DenseNet"}, r)
    with pytest.raises(FileNotFoundError, match="no net.config at"):
        subnet_from_net_config(tmp_path / "missing.config", r)
    # Weights of another network are refused with the keys named, nothing loaded.
    state = static.state_dict()
    del state["blocks.2.conv.point_linear.bn.weight"]
    config_path, weights_path = _save(tmp_path, static, config)
    torch.save(state, weights_path)
    with pytest.raises(ReferenceCheckpointError, match=r"missing keys \(1\): blocks\.2\.conv"):
        load_reference_subnet(config_path, weights_path, r)
    # The command line says the same, without a traceback, and writes nothing.
    from onceforall.cli import main

    out = tmp_path / "out"
    args = [str(config_path), str(weights_path), "--resolution", str(r), "--out", str(out)]
    assert main(["import-subnet", *args]) == 2
    assert not out.exists()
    # import_reference_subnet is what the command calls
    with pytest.raises(ReferenceCheckpointError):
        import_reference_subnet(config_path, weights_path, out, r, onnx=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_their_specialised_resnet_loads_with_the_same_logits(tmp_path, seed) -> None:
    """Their OFA-ResNet50 sub-network as ``get_active_subnet`` builds it (a ``ResNets``
    with its config), loaded through its net.config and weights."""
    from tests.test_reference_resnet import _reference_resnet

    reference = _reference_resnet(num_classes=10, seed=seed)
    random.seed(seed)
    theirs = reference.sample_active_subnet()  # {"d", "e", "w"}, their dict
    reference.set_active_subnet(**theirs)
    static = reference.get_active_subnet().eval()
    r = random.Random(seed).choice(range(128, 225, 4))
    config = json.loads(json.dumps(static.config))
    supernet, ours = load_reference_subnet(*_save(tmp_path, static, config), resolution=r)
    assert supernet == "ofa_resnet50"
    space = ours.config.space
    want_arch = space.canonical({**theirs, "r": [r]})
    got_arch = space.canonical(ours.arch)
    assert (got_arch.d, got_arch.e, got_arch.w[1:]) == (want_arch.d, want_arch.e, want_arch.w[1:])
    # w[0] indices 0 and 1 round to the same stem width: either is the same network.
    stem = ours.config.stem_mid_choices
    assert stem[got_arch.w[0]] == stem[want_arch.w[0]]
    x = torch.randn(2, 3, r, r, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want, got = static(x), ours(x)
    assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()
    signal = want[0] - want[1]
    assert ((got[0] - got[1]) - signal).abs().max() <= 1e-3 * signal.abs().max()
    if seed == 0:  # a block that is not a bottleneck of ours is named
        bad = json.loads(json.dumps(config))
        bad["blocks"][4]["kernel_size"] = 5
        with pytest.raises(NetConfigError, match="block 4: kernel_size 5"):
            subnet_from_net_config(bad, r)
        bad = json.loads(json.dumps(config))
        bad["blocks"][0]["mid_channels"] = 100
        with pytest.raises(NetConfigError, match="stage 0 mid_channels 100 is none of"):
            subnet_from_net_config(bad, r)


ZOO = Path(__file__).resolve().parents[2] / "shared" / "authors" / "specialized"
ZOO_NAMES = sorted(p.name for p in ZOO.iterdir()) if ZOO.is_dir() else []
needs_zoo = pytest.mark.skipif(not ZOO_NAMES, reason=f"the authors' net.configs are not at {ZOO}")


def _zoo_net(name: str, tmp_path) -> tuple[int, torch.nn.Module, list[str]]:
    """Their model zoo's own net.config of ``name`` built by their class with random
    weights and BN statistics estimated from data: (its input size from run.config, the
    network, the paths of its saved net.config and weights)."""
    from ofa.imagenet_classification.networks import MobileNetV3, ProxylessNASNets

    config = json.loads((ZOO / name / "net.config").read_text())
    r = json.loads((ZOO / name / "run.config").read_text())["image_size"]
    torch.manual_seed(0)
    classes = {"MobileNetV3": MobileNetV3, "ProxylessNASNets": ProxylessNASNets}
    static = classes[config["name"]].build_from_config(config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, tensor in static.state_dict().items():
            if key.endswith("bn.weight"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif key.endswith(("bn.bias", "linear.bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
    estimate_bn_statistics(static, r, gen, batch=4, batches=1)
    return r, static, [str(p) for p in _save(tmp_path, static, config)]


def _same_logits(static: torch.nn.Module, ours: torch.nn.Module, r: int) -> None:
    x = torch.randn(2, 3, r, r, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = static(x), ours(x)
    assert got.shape == (2, 1000)
    assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()
    signal = want[0] - want[1]
    assert ((got[0] - got[1]) - signal).abs().max() <= 1e-3 * signal.abs().max()


@needs_zoo
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_their_model_zoo_nets_load_at_their_input_size(tmp_path, name) -> None:
    """Their model zoo's net.config files run at 128 to 260 (beyond the 128..224 the
    supernets train at): each loads at the size its run.config gives and computes what
    their network computes."""
    r, static, paths = _zoo_net(name, tmp_path)
    _, ours = load_reference_subnet(*paths, resolution=r)
    assert ours.arch.r == r
    _same_logits(static, ours.eval(), r)


@pytest.mark.slow  # the export times the network: 5-20 s at this size on 2 cores
@needs_zoo
def test_their_largest_input_size_imports_and_loads_back(tmp_path) -> None:
    """``ofa import-subnet`` at 260, their largest size, and ``load_exported``."""
    from onceforall.cli import main

    name = "note10_lat-64ms_top1-80.2_finetune-75"
    r, static, paths = _zoo_net(name, tmp_path)
    assert r == 260
    out = tmp_path / "out"
    assert (
        main(["import-subnet", *paths, "--resolution", str(r), "--out", str(out), "--no-onnx"]) == 0
    )
    _same_logits(static, load_exported(out), r)


@pytest.mark.slow
@needs_zoo
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_their_model_zoo_nets_export_with_onnx_at_their_input_size(tmp_path, name) -> None:
    """The whole import at every size of theirs, ONNX checked with onnxruntime."""
    from onceforall.cli import main

    r, static, paths = _zoo_net(name, tmp_path)
    out = tmp_path / "out"
    assert main(["import-subnet", *paths, "--resolution", str(r), "--out", str(out)]) == 0
    assert (out / "model.onnx").is_file()  # kept only after onnxruntime agreed
    _same_logits(static, load_exported(out), r)


@needs_fashion_mnist
def test_an_imported_authors_net_fine_tunes_from_its_export(trained_run, tmp_path) -> None:
    """Their specialised network (their class, their net.config and weights, 10 classes),
    imported with ``ofa import-subnet`` and then fine-tuned with ``ofa finetune --from``:
    training starts from their weights and ends in an export of the same architecture."""
    from onceforall.cli import main

    theirs, static, config = _their_specialised_net("ofa_mbv3_d234_e346_k357_w1.0", 6)
    r = 28  # the run's training resolutions are 24 and 28
    imported = tmp_path / "imported"
    paths = [str(p) for p in _save(tmp_path, static, config)]
    assert main(["import-subnet", *paths, "--resolution", str(r), "--out", str(imported)]) == 0
    run = copy_run(trained_run, tmp_path)
    out = tmp_path / "tuned"
    command = ["finetune", "--run", str(run), "--from", str(imported), "--out", str(out)]
    assert main([*command, "--epochs", "0.3", "--lr", "0.01"]) == 0
    record = json.loads((out / "metadata.json").read_text())["finetune"]
    assert record["start"] == str(imported) and record["steps"] == 3
    assert record["kd_ratio"] == 1.0  # taught by the run's largest sub-network
    start, tuned = load_exported(imported), load_exported(out)
    space = tuned.config.space
    assert space.canonical(tuned.arch) == space.canonical({**theirs, "r": [r]})
    before, after = start.state_dict(), tuned.state_dict()
    assert before.keys() == after.keys()
    # Their weights were the start, not the run's supernet: three SGD steps leave the
    # network far nearer to theirs than to the same arch extracted from the run.
    from onceforall.training import load_run

    _, supernet = load_run(run)
    extracted = supernet.extract(tuned.arch).state_dict()
    convs = [k for k in before if k.endswith("conv.weight")]
    assert any(not torch.equal(before[k], after[k]) for k in convs)  # it trained
    for key in convs:
        assert (after[key] - before[key]).norm() < (after[key] - extracted[key]).norm(), key
