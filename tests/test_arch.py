"""The architecture space: validation, JSON round trip, sampling, counting, encoding."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings

from onceforall import Arch, ArchError, MBConvSpace
from tests.conftest import archs

SPACE = MBConvSpace()


def valid_dict() -> dict:
    return SPACE.largest(224).to_dict()


@given(archs(SPACE))
def test_json_round_trip(arch: Arch) -> None:
    text = arch.to_json()
    assert SPACE.parse(text) == arch
    assert SPACE.parse(json.loads(text)) == arch
    assert json.loads(text)["r"] == [arch.r]


def test_authors_format_loads_unchanged() -> None:
    # As the authors' sampler writes it: resolution in a list, "wid" None.
    raw = {
        "wid": None,
        "ks": [3, 5, 7, 3] * 5,
        "e": [3, 4, 6, 4] * 5,
        "d": [2, 3, 4, 2, 3],
        "r": [160],
    }
    arch = SPACE.parse(raw)
    assert arch.d == (2, 3, 4, 2, 3) and arch.r == 160 and arch.ks[1] == 5
    # A bare int resolution is accepted too.
    assert SPACE.parse({**raw, "r": 160}) == arch


def test_skipped_slots_are_ignored() -> None:
    raw = valid_dict()
    raw["d"] = [2, 4, 4, 4, 4]
    raw["ks"][2] = 0  # slot 2 and 3 of stage 0 are skipped: any value is fine
    raw["e"][3] = 99
    arch = SPACE.parse(raw)
    canonical = SPACE.canonical(arch)
    assert canonical.ks[2:4] == (0, 0) and canonical.e[2:4] == (0, 0)
    other = dict(raw, ks=list(raw["ks"]), e=list(raw["e"]))
    other["ks"][2], other["e"][3] = 5, 3
    assert SPACE.parse(other) != arch
    assert SPACE.canonical(other) == canonical


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a.pop("d"), "missing key(s) 'd'"),
        (lambda a: a.update(kss=[3]), "unknown key(s) 'kss'"),
        (lambda a: a["ks"].pop(), "ks has 19 entries; expected 20"),
        (lambda a: a["e"].append(3), "e has 21 entries; expected 20"),
        (lambda a: a.update(d=[4, 4, 4, 4]), "d has 4 entries; expected 5"),
        (
            lambda a: a["ks"].__setitem__(3, 4),
            "ks[3] = 4 is not an allowed kernel size; allowed: 3, 5, 7",
        ),
        (
            lambda a: a["e"].__setitem__(7, 5),
            "e[7] = 5 is not an allowed expand ratio; allowed: 3, 4, 6",
        ),
        (lambda a: a["d"].__setitem__(2, 5), "d[2] = 5 is not an allowed depth; allowed: 2, 3, 4"),
        (
            lambda a: a.update(r=[130]),
            "r = 130 is not an allowed resolution; allowed: 128 to 224 in steps of 4",
        ),
        (lambda a: a.update(r=300), "r = 300 is not an allowed resolution"),
        (lambda a: a.update(r=[128, 132]), "r must hold exactly one resolution"),
        (lambda a: a.update(r="224"), "r = '224' must be an int"),
        (lambda a: a["ks"].__setitem__(0, "7"), "ks[0] = '7' must be an int; allowed: 3, 5, 7"),
        (lambda a: a["e"].__setitem__(1, 4.0), "e[1] = 4.0 must be an int"),
        (lambda a: a["d"].__setitem__(0, True), "d[0] = True must be an int"),
        (lambda a: a.update(ks=7), "ks must be a list of 20 ints"),
    ],
)
def test_invalid_arch_names_field_index_value_and_choices(mutate, message) -> None:
    raw = valid_dict()
    mutate(raw)
    with pytest.raises(ArchError) as info:
        SPACE.parse(raw)
    assert message in str(info.value)


def test_non_dict_and_bad_json() -> None:
    with pytest.raises(ArchError, match="must be a dict"):
        SPACE.parse([1, 2, 3])
    with pytest.raises(ArchError, match="not valid JSON"):
        SPACE.parse("{ks: ")


@settings(max_examples=200)
@given(archs(SPACE))
def test_every_generated_arch_is_valid_and_encodes_to_one_hot(arch: Arch) -> None:
    feature = SPACE.encode(arch)
    assert feature.shape == (SPACE.encoding_size,) == (25 + 20 * 6,)
    assert set(np.unique(feature)) <= {0.0, 1.0}
    active = SPACE.active_slots(arch)
    # one resolution bit, one kernel bit and one expand bit per active slot
    assert feature.sum() == 1 + 2 * len(active)
    assert feature[:25].argmax() == SPACE.resolutions.index(arch.r)
    k_part = feature[25 : 25 + 60].reshape(20, 3)
    e_part = feature[85:].reshape(20, 3)
    for slot in range(20):
        if slot in active:
            assert SPACE.kernel_sizes[k_part[slot].argmax()] == arch.ks[slot]
            assert SPACE.expand_ratios[e_part[slot].argmax()] == arch.e[slot]
        else:
            assert k_part[slot].sum() == 0 and e_part[slot].sum() == 0
    # archs that run the same network encode the same
    assert np.array_equal(feature, SPACE.encode(SPACE.canonical(arch)))


def test_sample_is_seeded_and_covers_the_choices() -> None:
    assert SPACE.sample(3) == SPACE.sample(3)
    rng = random.Random(0)
    samples = [SPACE.sample(rng) for _ in range(300)]
    assert len(set(samples)) == 300
    assert {k for a in samples for k in a.ks} == {3, 5, 7}
    assert {x for a in samples for x in a.e} == {3, 4, 6}
    assert {x for a in samples for x in a.d} == {2, 3, 4}
    assert {a.r for a in samples} == set(range(128, 225, 4))
    for a in samples:
        assert SPACE.parse(a.to_dict()) == a


def test_largest_smallest_and_count() -> None:
    assert SPACE.largest() == Arch((7,) * 20, (6,) * 20, (4,) * 5, 224)
    assert SPACE.smallest() == Arch((3,) * 20, (3,) * 20, (2,) * 5, 128)
    # SPEC section 1: ((3 x 3)^2 + (3 x 3)^3 + (3 x 3)^4)^5 sub-networks, x 25 resolutions
    assert SPACE.num_subnets(with_resolution=False) == (9**2 + 9**3 + 9**4) ** 5
    assert math.isclose(SPACE.num_subnets(with_resolution=False), 2.18e19, rel_tol=0.01)
    assert SPACE.num_subnets() == 25 * (9**2 + 9**3 + 9**4) ** 5


def test_custom_resolutions_for_small_images() -> None:
    space = MBConvSpace(resolutions=(24, 28, 32, 36, 40))
    assert space.encoding_size == 5 + 120
    with pytest.raises(ArchError, match="allowed: 24 to 40 in steps of 4"):
        space.parse({**space.largest().to_dict(), "r": [128]})
