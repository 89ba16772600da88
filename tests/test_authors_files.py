"""The authors' accuracy predictors and latency lookup tables (the files their package
downloads, kept in ``../shared/authors/``), read by us, against their own code reading
the same files: same predictions, same latencies. Bad files are refused in one line
naming the file, and a malicious pickle runs no code."""

from __future__ import annotations

import builtins
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import onceforall
from onceforall.compat.latency_tables import (
    open_latency_table,
    read_authors_tables,
    write_authors_tables,
)
from onceforall.compat.predictors import open_predictor, write_authors_predictor
from onceforall.errors import FileFormatError, InputNotFoundError, OnceForAllError
from onceforall.latency.base import LatencyTableError, MissingResolutionError
from onceforall.predictors import AccuracyPredictor, PredictorMismatchError
from onceforall.search import genome_layout, latency_cost

AUTHORS = Path(__file__).resolve().parents[2] / "shared" / "authors"
if not (AUTHORS / "acc_predictor.pth").is_file():  # pragma: no cover - depends on the checkout
    pytest.skip(f"the authors' files are not at {AUTHORS}", allow_module_level=True)
MBV3_PREDICTOR = AUTHORS / "acc_predictor.pth"
RESNET_PREDICTOR = AUTHORS / "ofa_resnet50_acc_predictor.pth"
NOTE10 = AUTHORS / "note10"
NOTE10_RESOLUTIONS = (160, 176, 192, 208, 224)

tutorial = pytest.importorskip("ofa.tutorial", reason="the authors' package is not installed")
tutorial_latency = pytest.importorskip("ofa.tutorial.latency_table")
tutorial_search = pytest.importorskip("ofa.tutorial.evolution_finder")
nas_predictor = pytest.importorskip("ofa.nas.accuracy_predictor")


def seeded(seed: int, draw):
    """``draw()`` under the global ``random`` state their samplers use, seeded, leaving
    the state as it was."""
    state = random.getstate()
    random.seed(seed)
    try:
        return draw()
    finally:
        random.setstate(state)


def their_mbv3_archs(n: int, resolutions, seed: int = 0) -> list[dict]:
    """``n`` arch dicts from their tutorial's sampler, each at a random resolution of
    ``resolutions``."""
    manager = tutorial_search.ArchManager()
    rng = random.Random(seed)
    archs = seeded(seed, lambda: [manager.random_sample() for _ in range(n)])
    return [{**a, "r": [rng.choice(list(resolutions))]} for a in archs]


def their_tutorial_predictor() -> object:
    theirs = tutorial.AccuracyPredictor(pretrained=False, device="cpu")
    theirs.model.load_state_dict(torch.load(MBV3_PREDICTOR, map_location="cpu", weights_only=True))
    return theirs


@pytest.fixture(scope="module")
def w12() -> onceforall.Supernet:
    return onceforall.create_supernet("ofa_mbv3_w1.2", num_classes=1000)


@pytest.fixture
def their_latency_table(monkeypatch):
    """Their tutorial ``LatencyTable`` on the local note10 files: its download is pointed
    at them, and its ``yaml.load(fp)`` (no loader: current PyYAML refuses it) gets the
    safe loader, for this test only."""
    safe_load = yaml.load

    def load(stream, Loader=yaml.SafeLoader):  # noqa: N803 - PyYAML's argument name
        return safe_load(stream, Loader=Loader)

    monkeypatch.setattr(tutorial_latency.yaml, "load", load)

    def local(folder: Path):
        monkeypatch.setattr(
            tutorial_latency, "download_url", lambda url, *a, **k: str(folder / url.split("/")[-1])
        )

    local(NOTE10)
    return local


# ------------------------------------------------------------------ differential tests
def test_mbv3_predictor_agrees_with_their_tutorial_predictor(w12) -> None:
    """200 archs of their sampler at random resolutions of the file's range (their
    encoding takes 112..239 in buckets of 16; every other size, as search handles at most
    126 choices per decision): the same accuracy, to 1e-6 of a fraction."""
    sizes = range(112, 240, 2)
    net = onceforall.create_supernet("ofa_mbv3_w1.2", num_classes=1000, resolutions=sizes)
    ours = open_predictor(MBV3_PREDICTOR, net)
    archs = their_mbv3_archs(200, sizes, seed=1)
    want = their_tutorial_predictor().predict_accuracy(archs).numpy()[:, 0]
    got = ours.predict(archs)
    assert np.abs(got / 100 - want).max() <= 1e-6
    assert 60 < got.min() and got.max() < 90  # percent
    # What search calls (gene rows, at the resolutions it searches) says the same.
    space = w12.space
    at = [{**a, "r": [random.Random(i).choice(space.resolutions)]} for i, a in enumerate(archs)]
    genes = genome_layout(space).genes_of(at)
    searched = open_predictor(MBV3_PREDICTOR, w12).gene_predictor(space)(genes)
    want = their_tutorial_predictor().predict_accuracy(at).numpy()[:, 0]
    assert np.abs(searched / 100 - want).max() <= 1e-6


def test_note10_tables_agree_with_their_tutorial_latency_table(w12, their_latency_table) -> None:
    """Their tutorial ``LatencyTable`` and ours on the note10 files: the same ms (1e-6)
    for 200 archs of their sampler, and search's vectorised costs agree too."""
    theirs = tutorial_latency.LatencyTable(device="note10", resolutions=NOTE10_RESOLUTIONS)
    ours = open_latency_table(NOTE10, w12)
    assert ours.resolutions == NOTE10_RESOLUTIONS and not ours.measurable_here
    assert ours.origin["device"] == "note10" and ours.origin["calibration"] is None
    archs = their_mbv3_archs(200, NOTE10_RESOLUTIONS, seed=2)
    want = np.array([theirs.predict_efficiency(a) for a in archs])
    got = np.array([ours.predict(a) for a in archs])
    assert np.abs(got - want).max() <= 1e-6
    assert 10 < want.min() and want.max() < 100
    space = w12.space.restrict(resolutions=NOTE10_RESOLUTIONS)
    cost = latency_cost(ours, space)
    vectorised = cost.of_genes(genome_layout(space).genes_of(archs))
    assert np.abs(vectorised - want).max() <= 1e-9


def test_resnet_predictor_agrees_with_their_resnet_encoder() -> None:
    """Their ``ofa.nas`` predictor with their ``ResNetArchEncoder`` over the predictor's
    eight resolutions, and ours: 200 archs of their sampler, the same accuracy."""
    from onceforall.compat.resnet import PREDICTOR_RESOLUTIONS

    encoder = nas_predictor.ResNetArchEncoder(image_size_list=list(PREDICTOR_RESOLUTIONS))
    theirs = nas_predictor.AccuracyPredictor(
        encoder, 400, 3, checkpoint_path=str(RESNET_PREDICTOR), device="cpu"
    )
    net = onceforall.create_supernet("ofa_resnet50", resolutions=PREDICTOR_RESOLUTIONS)
    ours = open_predictor(RESNET_PREDICTOR, net)
    archs = seeded(3, lambda: [encoder.random_sample_arch() for _ in range(200)])
    with torch.no_grad():
        want = theirs.predict_acc(archs).numpy()
    got = ours.predict(archs)
    assert np.abs(got / 100 - want).max() <= 1e-6
    # On the supernet import-reference makes (128..224 by 4) it covers six of its sizes.
    default = onceforall.create_supernet("ofa_resnet50")
    assert set(open_predictor(RESNET_PREDICTOR, default).resolutions) & set(
        default.space.resolutions
    ) == {128, 144, 160, 176, 192, 224}


# ---------------------------------------------------------------- writing their formats
def test_our_predictor_written_in_their_format_loads_in_their_tutorial(tmp_path) -> None:
    """Our predictor (on resolutions in distinct buckets of their encoding) written as
    their tutorial's file: their class loads it strictly and predicts what ours does."""
    torch.manual_seed(0)
    space = onceforall.MBConvSpace(resolutions=(128, 160, 176, 208, 224))
    ours = AccuracyPredictor(space, base_accuracy=74.0)
    for module in ours.mlp:
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.05)
    path = write_authors_predictor(ours, tmp_path / "acc_predictor.pth")
    theirs = tutorial.AccuracyPredictor(pretrained=False, device="cpu")
    theirs.model.load_state_dict(torch.load(path, weights_only=True))  # strict
    archs = their_mbv3_archs(50, space.resolutions, seed=4)
    want = ours.predict(archs)
    assert np.abs(theirs.predict_accuracy(archs).numpy()[:, 0] * 100 - want).max() <= 1e-4
    # Resolutions that share a bucket of theirs cannot be told apart: refused.
    crowded = AccuracyPredictor(onceforall.MBConvSpace(resolutions=(128, 132)))
    with pytest.raises(PredictorMismatchError, match="distinct buckets.*128, 132"):
        write_authors_predictor(crowded, tmp_path / "x.pth")
    resnet = AccuracyPredictor(onceforall.create_supernet("ofa_resnet50").space)
    with pytest.raises(PredictorMismatchError, match="no predictor format"):
        write_authors_predictor(resnet, tmp_path / "y.pth")
    linear = AccuracyPredictor(space, layers=0)
    with pytest.raises(PredictorMismatchError, match="this predictor is linear.*--kind mlp"):
        write_authors_predictor(linear, tmp_path / "z.pth")
    ensemble = AccuracyPredictor(space, members=2)  # theirs holds one MLP
    with pytest.raises(PredictorMismatchError, match="ensemble of 2.*predictor_members: 1"):
        write_authors_predictor(ensemble, tmp_path / "z.pth")
    assert not any((tmp_path / name).exists() for name in ("x.pth", "y.pth", "z.pth"))


def test_tables_written_in_their_format_read_back_in_both_codes(
    w12, tmp_path, their_latency_table
) -> None:
    ours = read_authors_tables(NOTE10, w12)
    written = write_authors_tables(ours, w12, tmp_path / "copy")
    assert [f.name for f in written] == [f"{r}_lookup_table.yaml" for r in NOTE10_RESOLUTIONS]
    again = open_latency_table(tmp_path / "copy", w12)
    their_latency_table(tmp_path / "copy")
    theirs = tutorial_latency.LatencyTable(device="copy", resolutions=NOTE10_RESOLUTIONS)
    for arch in their_mbv3_archs(50, NOTE10_RESOLUTIONS, seed=5):
        assert again.predict(arch) == pytest.approx(ours.predict(arch), abs=1e-9)
        assert theirs.predict_efficiency(arch) == pytest.approx(ours.predict(arch), abs=1e-9)


# ------------------------------------------------------------------------ refusals
def test_their_predictors_refuse_supernets_they_do_not_fit(w12) -> None:
    proxyless = onceforall.create_supernet("ofa_proxyless_w1.3", num_classes=1000)
    with pytest.raises(PredictorMismatchError, match="made for ofa_mbv3_w1.2"):
        open_predictor(MBV3_PREDICTOR, proxyless)
    w10 = onceforall.create_supernet("ofa_mbv3_w1.0", num_classes=1000)
    with pytest.raises(PredictorMismatchError, match=r"width_mult 1\.0 \(expected 1\.2\)"):
        open_predictor(MBV3_PREDICTOR, w10)
    small = onceforall.create_supernet("ofa_mbv3_w1.2", num_classes=1000, resolutions=[24, 32])
    with pytest.raises(PredictorMismatchError, match="encodes resolutions 112 to 239"):
        open_predictor(MBV3_PREDICTOR, small)
    with pytest.raises(PredictorMismatchError, match="made for ofa_resnet50"):
        open_predictor(RESNET_PREDICTOR, w12)
    predictor = open_predictor(MBV3_PREDICTOR, w12)
    with pytest.raises(onceforall.ArchError):
        predictor.predict([{"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": [240]}])


def test_note10_tables_refuse_other_supernets_and_resolutions(w12) -> None:
    table = open_latency_table(NOTE10, w12)
    arch = {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": [164]}
    with pytest.raises(MissingResolutionError, match="resolution 164; it has 160, 176, 192"):
        table.predict(arch)
    w10 = onceforall.create_supernet("ofa_mbv3_w1.0", num_classes=1000)
    with pytest.raises(LatencyTableError, match=r"160_lookup_table\.yaml has no entry 'Conv-"):
        open_latency_table(NOTE10, w10)
    proxyless = onceforall.create_supernet("ofa_proxyless_w1.3", num_classes=1000)
    with pytest.raises(LatencyTableError, match="describe OFA-MobileNetV3"):
        open_latency_table(NOTE10, proxyless)
    with pytest.raises(LatencyTableError, match="read for ofa_mbv3_w1.2"):
        table.check_compatible(w10)


def _one_line(error: BaseException, path: Path) -> None:
    assert isinstance(error, OnceForAllError)
    assert "\n" not in str(error) and str(path) in str(error), str(error)


def test_bad_files_are_refused_in_one_line_naming_the_file(w12, tmp_path) -> None:
    # A predictor of another shape.
    state = torch.load(MBV3_PREDICTOR, map_location="cpu", weights_only=True)
    state["0.weight"] = torch.zeros(400, 100)
    torch.save(state, tmp_path / "wide.pth")
    with pytest.raises(FileFormatError, match="MLP on 100 features.*128 features") as info:
        open_predictor(tmp_path / "wide.pth", w12)
    _one_line(info.value, tmp_path / "wide.pth")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(FileFormatError, match="neither an onceforall accuracy predictor") as info:
        open_predictor(tmp_path / "other.pth", w12)
    _one_line(info.value, tmp_path / "other.pth")
    # A truncated file.
    data = MBV3_PREDICTOR.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="weights-only PyTorch file") as info:
        open_predictor(tmp_path / "cut.pth", w12)
    _one_line(info.value, tmp_path / "cut.pth")
    with pytest.raises(InputNotFoundError):
        open_predictor(tmp_path / "missing.pth", w12)
    # A lookup table that lacks a block's key.
    folder = tmp_path / "note10"
    shutil.copytree(NOTE10, folder)
    file = folder / "176_lookup_table.yaml"
    entries = yaml.safe_load(file.read_text())
    key = next(k for k in entries if "expand:408-kernel:5" in k)
    del entries[key]
    file.write_text(yaml.safe_dump(entries))
    with pytest.raises(LatencyTableError, match="has no entry") as info:
        open_latency_table(folder, w12)
    _one_line(info.value, file)
    assert key in str(info.value)
    # A YAML file that is not a table, and one that is not YAML.
    file.write_text("- just\n- a list\n")
    with pytest.raises(LatencyTableError, match="not a lookup table") as info:
        open_latency_table(folder, w12)
    _one_line(info.value, file)
    file.write_text("key: [unclosed\n")
    with pytest.raises(LatencyTableError, match="not valid YAML") as info:
        open_latency_table(folder, w12)
    _one_line(info.value, file)
    # A folder without their files.
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatencyTableError, match="holds no lookup table") as info:
        open_latency_table(tmp_path / "empty", w12)
    _one_line(info.value, tmp_path / "empty")


class _Payload:
    """Unpickling this would call ``open(marker, "w")``: creating the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def test_a_malicious_pickle_in_place_of_their_predictor_runs_no_code(w12, tmp_path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "acc_predictor.pth"
    torch.save({"0.weight": _Payload(marker)}, path)
    torch.load(path, weights_only=False)  # the file does what it says when unpickled...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(FileFormatError, match="weights-only") as info:
        open_predictor(path, w12)  # ...and reading it as a predictor runs nothing
    _one_line(info.value, path)
    assert not marker.exists()


def test_export_predictor_command_writes_what_their_tutorial_loads(tmp_path) -> None:
    from onceforall.cli import main

    space = onceforall.MBConvSpace(resolutions=(160, 192, 224))
    torch.manual_seed(1)
    AccuracyPredictor(space, base_accuracy=70.0).save(tmp_path / "ours.pt")
    target = tmp_path / "acc_predictor.pth"
    args = ["export-predictor", "--predictor", str(tmp_path / "ours.pt"), "--out", str(target)]
    assert main(args) == 0
    theirs = tutorial.AccuracyPredictor(pretrained=False, device="cpu")
    theirs.model.load_state_dict(torch.load(target, weights_only=True))  # strict
    archs = their_mbv3_archs(10, space.resolutions, seed=7)
    want = AccuracyPredictor.load(tmp_path / "ours.pt").predict(archs)
    assert np.abs(theirs.predict_accuracy(archs).numpy()[:, 0] * 100 - want).max() <= 1e-4


@pytest.mark.slow  # times every block shape of w1.2 (about 25 s on 2 busy cores)
def test_latency_table_command_writes_what_their_tutorial_reads(
    tmp_path, their_latency_table
) -> None:
    """``ofa latency-table --format authors`` for w1.2 with 1000 classes (their tutorial's
    network), at one small size: their tutorial's LatencyTable reads the files and
    predicts what our table predicts."""
    from onceforall.cli import main
    from onceforall.latency.table import LatencyTable

    out = tmp_path / "here"
    args = ["latency-table", "--supernet", "ofa_mbv3_w1.2", "--num-classes", "1000"]
    args += ["--resolutions", "32", "--repeats", "1", "--format", "authors", "--out", str(out)]
    assert main(args) == 0
    written = sorted(p.name for p in out.iterdir())  # and the hidden lock of the table
    assert written == [".latency_table.json.lock", "32_lookup_table.yaml", "latency_table.json"]
    net = onceforall.create_supernet("ofa_mbv3_w1.2", num_classes=1000, resolutions=[32])
    ours = LatencyTable.load(out / "latency_table.json", net)
    their_latency_table(out)
    theirs = tutorial_latency.LatencyTable(device="here", resolutions=(32,))
    for arch in their_mbv3_archs(20, [32], seed=6):
        assert theirs.predict_efficiency(arch) == pytest.approx(ours.predict(arch), abs=1e-9)


def test_resnet_search_under_macs_with_their_predictor() -> None:
    """OFA-ResNet50 (as import-reference makes it: 128..224 by 4) searched under a MACs
    target with their predictor: the sizes it encodes are searched, and the winner's
    predicted top-1 is what their own predictor says of it."""
    from onceforall.compat.resnet import PREDICTOR_RESOLUTIONS
    from onceforall.deploy.steps import search_step

    net = onceforall.create_supernet("ofa_resnet50", num_classes=1000)
    predictor = open_predictor(RESNET_PREDICTOR, net)
    [found] = search_step(net, predictor, ["macs<=2G"], generations=30, seed=0)
    assert found.resolutions == (128, 144, 160, 176, 192, 224)
    assert found.costs["macs"] <= 2e9 and found.arch.r in found.resolutions
    encoder = nas_predictor.ResNetArchEncoder(image_size_list=list(PREDICTOR_RESOLUTIONS))
    theirs = nas_predictor.AccuracyPredictor(
        encoder, 400, 3, checkpoint_path=str(RESNET_PREDICTOR), device="cpu"
    )
    arch = {**found.arch.to_dict(), "image_size": found.arch.r}
    del arch["r"]
    with torch.no_grad():
        want = theirs.predict_acc([arch, arch])[0].item()
    assert found.predicted_accuracy == pytest.approx(100 * want, abs=1e-4)
