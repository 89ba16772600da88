"""The ``ofa`` command, run in-process on the real supernet."""

from __future__ import annotations

import json

import onceforall
from onceforall.cli import main


def test_list(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "ofa_mbv3_w1.0" in out and "2.18e+19" in out


def test_profile_prints_measured_rows_smallest_to_largest(capsys, tmp_path) -> None:
    out_json = tmp_path / "rows.json"
    code = main(
        [
            "profile",
            "--num-random",
            "1",
            "--repeats",
            "2",
            "--threads",
            "1",
            "--num-classes",
            "10",
            "--json",
            str(out_json),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    records = json.loads(out_json.read_text())
    assert len(records) == 3
    net = onceforall.create_supernet("ofa_mbv3_w1.0", num_classes=10)
    assert records[0]["arch"] == net.space.smallest().to_dict()
    assert records[-1]["arch"] == net.space.largest().to_dict()
    macs = [r["macs"] for r in records]
    assert macs == sorted(macs)
    for record in records:
        assert record["macs"] == net.macs(record["arch"])
        assert record["params"] == net.params(record["arch"])
        assert record["latency_ms"] > 0
        assert f"{record['macs'] / 1e6:.1f}" in out


def test_inspect_valid_and_invalid(capsys, tmp_path) -> None:
    arch = onceforall.MBConvSpace().smallest(160)
    path = tmp_path / "arch.json"
    path.write_text(arch.to_json())
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    net = onceforall.create_supernet("ofa_mbv3_w1.0")
    assert f"{net.macs(arch) / 1e6:.2f} M at 160x160" in out

    bad = arch.to_dict()
    bad["e"][0] = 5
    assert main(["inspect", json.dumps(bad)]) == 2
    err = capsys.readouterr().err
    assert "e[0] = 5 is not an allowed expand ratio; allowed: 3, 4, 6" in err
    assert main(["inspect", str(tmp_path / "missing.json")]) == 2
    assert "neither a file nor arch JSON" in capsys.readouterr().err
