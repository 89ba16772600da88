"""Sub-networks as backbones: ``extract(arch, features_only=True)`` and
``load_exported(path, features_only=True)`` return the feature maps at strides 4, 8, 16
and 32 that the network itself computes, describe them in ``feature_info``, train inside
a torchvision detector and export to ONNX with one output per map."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN

import onceforall
from onceforall.data import make_loader, open_dataset, subset_for_budget
from onceforall.deploy.export import export_subnet, load_exported
from onceforall.errors import ConfigError
from onceforall.models.features import FeatureNet
from onceforall.storage.onnx_export import export_onnx, require
from tests.conftest import needs_fashion_mnist, randomize

SIZE = 64  # input side: every stride up to 32 divides it


@pytest.fixture(
    scope="module",
    params=[
        "ofa_mbv3_w1.0",
        "ofa_proxyless_w1.3",
        pytest.param("ofa_resnet50", marks=pytest.mark.slow),  # about 6 s (make test-slow)
    ],
)
def supernet(request) -> onceforall.Supernet:
    torch.manual_seed(0)
    net = onceforall.create_supernet(request.param, num_classes=10)
    return randomize(net, seed=1).eval()


def archs(net, count: int = 4) -> list:
    rng = random.Random(7)
    space = net.space
    return [space.smallest(), space.largest(), *(space.sample(rng) for _ in range(count - 2))]


def tapped_outputs(network: torch.nn.Module, modules: list[torch.nn.Module], x) -> list:
    """What ``modules`` (parts of ``network``) output while ``network`` runs on ``x``."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out: seen.__setitem__(id(mod), out))
        for m in modules
    ]
    try:
        network(x)
    finally:
        for hook in hooks:
            hook.remove()
    return [seen[id(m)] for m in modules]


@torch.no_grad()
def test_the_maps_are_what_the_network_computes(supernet) -> None:
    x = torch.randn(2, 3, SIZE, SIZE)
    for arch in archs(supernet):
        features = supernet.extract(arch, features_only=True)
        assert isinstance(features, FeatureNet) and not features.training
        maps = features(x)
        info = features.feature_info
        assert info.reduction() == [4, 8, 16, 32]
        assert [m.shape[1] for m in maps] == info.channels()
        assert [SIZE // m.shape[-1] for m in maps] == info.reduction()
        assert not any("classifier" in key for key in features.state_dict())
        # The full sub-network computes the same maps on its way to the logits.
        full = supernet.extract(arch)
        body = dict(full.feature_body())
        taps = tapped_outputs(full, [body[name] for name in info.module_name()], x)
        for ours, theirs in zip(maps, taps):
            assert torch.equal(ours, theirs)


def test_out_indices_pick_the_strides_and_bad_ones_name_the_choices(supernet) -> None:
    arch = supernet.space.sample(3)
    features = supernet.extract(arch, features_only=True, out_indices=(0, 2))
    assert features.feature_info.reduction() == [2, 8]
    # Nothing after the last map requested is kept or run.
    last = features.feature_info.module_name()[-1]
    assert list(dict(features.named_children()))[-1] == last
    with torch.no_grad():
        assert [m.shape[-1] for m in features(torch.randn(1, 3, SIZE, SIZE))] == [32, 8]
    for bad in [(5,), (), (1, 1), (-1,)]:
        with pytest.raises(ConfigError, match=r"out_indices .* must be one of 0 \(stride 2\)"):
            supernet.extract(arch, features_only=True, out_indices=bad)


def test_a_detector_trains_on_an_ofa_backbone(supernet) -> None:
    torch.manual_seed(0)
    body = supernet.extract(supernet.space.sample(11), features_only=True).train()
    info = body.feature_info
    backbone = BackboneWithFPN(body, info.return_layers(), info.channels(), out_channels=32)
    anchors = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 5)
    detector = FasterRCNN(
        backbone, num_classes=3, min_size=SIZE, max_size=SIZE, rpn_anchor_generator=anchors
    ).train()
    images = [torch.rand(3, SIZE, SIZE) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[8.0, 8.0, 40.0, 36.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[20.0, 4.0, 60.0, 50.0]]), "labels": torch.tensor([2])},
    ]
    optimizer = torch.optim.SGD(detector.parameters(), lr=0.01)
    before = [p.detach().clone() for p in body.parameters()]
    losses = detector(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in body.parameters() if p.requires_grad)
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, body.parameters()))
    detector.eval()
    with torch.no_grad():
        [detections] = detector([torch.rand(3, SIZE, SIZE)])
    assert set(detections) == {"boxes", "labels", "scores"}


@torch.no_grad()
def test_the_maps_export_to_onnx_and_onnxruntime_agrees(supernet, tmp_path) -> None:
    ort = require("onnxruntime", "the test")
    features = supernet.extract(supernet.space.sample(5), features_only=True)
    names = [f"stride{r}" for r in features.feature_info.reduction()]
    path = tmp_path / "features.onnx"
    export_onnx(features, (1, 3, SIZE, SIZE), path, dynamic_batch=True, output_names=names)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == names
    x = torch.randn(3, 3, SIZE, SIZE)
    for ours, theirs in zip(features(x), session.run(None, {"input": x.numpy()})):
        scale = max(1.0, float(ours.abs().max()))
        np.testing.assert_allclose(theirs, ours.numpy(), atol=1e-4 * scale, rtol=0)


@needs_fashion_mnist
@torch.no_grad()
def test_an_export_loads_as_a_backbone(tmp_path) -> None:
    torch.manual_seed(0)
    net = randomize(onceforall.create_supernet("ofa_mbv3_w1.0", num_classes=10), seed=2)
    arch = net.space.sample(1)
    images = subset_for_budget(open_dataset("fashion-mnist", "train"), 64, seed=0)
    loader = make_loader(images, 32, [arch.r], train=False, seed=0, num_workers=0)
    export_subnet(net, arch, tmp_path / "e", calibration_loader=loader, n_calibration=64)
    full = load_exported(tmp_path / "e")
    features = load_exported(tmp_path / "e", features_only=True, out_indices=(2, 3, 4))
    assert not features.training and features.feature_info.reduction() == [8, 16, 32]
    x = torch.randn(2, 3, arch.r, arch.r)
    body = dict(full.feature_body())
    taps = tapped_outputs(full, [body[n] for n in features.feature_info.module_name()], x)
    for ours, theirs in zip(features(x), taps):
        assert torch.equal(ours, theirs)
