"""Architecture search: vectorised populations, additive costs, constraints, evolution,
random search and the NSGA-II Pareto front."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import onceforall
from onceforall import Arch, MBConvSpace
from onceforall.search import (
    AdditiveCost,
    ArchBatch,
    Constraint,
    ConstraintSet,
    InfeasibleConstraintError,
    as_predictor,
    crowding_distance,
    evolutionary_search,
    genome_layout,
    latency_cost,
    macs_cost,
    non_dominated_ranks,
    params_cost,
    pareto_search,
    parse_constraint,
    random_search,
    torch_predictor,
)
from tests.conftest import archs

SPACE = MBConvSpace()
# A space small enough to enumerate: 2 stages of 2 slots, 2 kernels, 2 expands, 2 sizes.
TINY = MBConvSpace(
    kernel_sizes=(3, 5),
    expand_ratios=(3, 6),
    depths=(1, 2),
    stage_max_depths=(2, 2),
    resolutions=(32, 64),
)


@pytest.fixture(scope="module")
def net() -> onceforall.Supernet:
    return onceforall.create_supernet("ofa_mbv3_w1.0", num_classes=10)


@pytest.fixture(scope="module")
def costs(net):
    return {"macs": macs_cost(net), "params": params_cost(net)}


def mlp_predictor(space: MBConvSpace, seed: int = 0) -> torch.nn.Module:
    """A real (untrained, fixed-seed) accuracy-predictor MLP of the paper's shape."""
    torch.manual_seed(seed)
    d = space.encoding_size
    return torch.nn.Sequential(
        torch.nn.Linear(d, 400),
        torch.nn.ReLU(),
        torch.nn.Linear(400, 400),
        torch.nn.ReLU(),
        torch.nn.Linear(400, 400),
        torch.nn.ReLU(),
        torch.nn.Linear(400, 1),
    )


def linear_predictor(space: MBConvSpace, seed: int = 0):
    """A deterministic linear function of the one-hot encoding."""
    weights = np.random.default_rng(seed).normal(size=space.encoding_size)
    return lambda features: features @ weights


def all_genes(space: MBConvSpace) -> np.ndarray:
    layout = genome_layout(space)
    return np.array(list(itertools.product(*[range(c) for c in layout.cardinality])))


class MacsLatencyTable:
    """A latency table made of real numbers: 1 ms per 10M MACs plus 0.02 ms per layer of
    the supernet's own layer list, additive like a measured per-layer table."""

    def __init__(self, supernet: onceforall.Supernet) -> None:
        self.space = supernet.space
        self.parts = {r: supernet.cost_parts(r) for r in self.space.resolutions}

    @staticmethod
    def _ms(rows) -> float:
        return sum(row.macs for row in rows) / 1e7 + 0.02 * len(rows)

    def fixed_ms(self, resolution: int) -> float:
        parts = self.parts[resolution]
        return self._ms(parts.stem) + self._ms(parts.head)

    def block_ms(self, resolution: int, slot: int, kernel_size: int, expand_ratio: int) -> float:
        return self._ms(self.parts[resolution].blocks[(slot, kernel_size, expand_ratio)])

    def predict(self, arch: Arch) -> float:
        return self.fixed_ms(arch.r) + sum(
            self.block_ms(arch.r, s, arch.ks[s], arch.e[s]) for s in self.space.active_slots(arch)
        )


# ---------------------------------------------------------------- populations
@settings(max_examples=50, deadline=None)
@given(st.lists(archs(SPACE), min_size=1, max_size=8))
def test_batch_round_trip_encode_and_mask(batch_archs: list[Arch]) -> None:
    batch = ArchBatch.from_archs(SPACE, batch_archs)
    assert batch.to_archs() == batch_archs
    assert batch.to_archs(canonical=True) == [SPACE.canonical(a) for a in batch_archs]
    np.testing.assert_array_equal(batch.encode(), np.stack([SPACE.encode(a) for a in batch_archs]))
    for row, arch in zip(batch.active_mask(), batch_archs):
        assert np.flatnonzero(row).tolist() == SPACE.active_slots(arch)


@pytest.mark.parametrize(
    "space", [SPACE, TINY, MBConvSpace(depths=(2, 3), stage_max_depths=(4, 3, 4, 3, 4))]
)
def test_vectorised_encode_matches_space_encode_on_many_archs(space: MBConvSpace) -> None:
    batch = ArchBatch.sample(space, 2000, np.random.default_rng(0))
    expected = np.stack([space.encode(a) for a in batch.to_archs()])
    np.testing.assert_array_equal(batch.encode(), expected)
    # Canonical archs (skipped slots written as 0) pack to the same networks.
    canonical = ArchBatch.from_archs(space, batch.to_archs(canonical=True))
    np.testing.assert_array_equal(canonical.encode(), expected)


def test_sampling_covers_every_choice_uniformly() -> None:
    batch = ArchBatch.sample(SPACE, 20000, np.random.default_rng(1))
    for column, n in zip(batch.genes.T, genome_layout(SPACE).cardinality):
        freq = np.bincount(column, minlength=n) / len(column)
        assert np.allclose(freq, 1 / n, atol=0.02)


def test_mutation_and_crossover() -> None:
    rng = np.random.default_rng(2)
    a = ArchBatch.sample(SPACE, 4000, rng)
    b = ArchBatch.sample(SPACE, 4000, rng)
    np.testing.assert_array_equal(a.mutate(rng, prob=0.0, resolution_prob=0.0).genes, a.genes)
    mutated = a.mutate(rng, prob=0.1, resolution_prob=0.5)
    changed = mutated.genes != a.genes
    layout = genome_layout(SPACE)
    # A redraw lands on a new choice with probability (n - 1) / n.
    expected = np.r_[np.full(layout.n_genes - 1, 0.1), 0.5] * (1 - 1 / layout.cardinality)
    assert np.allclose(changed.mean(axis=0), expected, atol=0.02)
    # A block's kernel and expand ratio are redrawn together (as in the authors' finder).
    s = layout.n_slots
    k_only = changed[:, :s] & ~changed[:, s : 2 * s]
    assert k_only.mean() == pytest.approx(0.1 * 2 / 3 * 1 / 3, abs=0.003)

    child = a.crossover(b, rng).genes
    assert ((child == a.genes) | (child == b.genes)).all()
    differ = a.genes != b.genes
    assert abs((child == b.genes)[differ].mean() - 0.5) < 0.02
    np.testing.assert_array_equal(a.crossover(a, rng).genes, a.genes)


def test_unique_ignores_skipped_slots() -> None:
    arch = SPACE.smallest(160)
    # Differs in slots 2 and 3 only, which depth 2 skips.
    other = Arch(ks=arch.ks[:2] + (7, 7) + arch.ks[4:], e=arch.e, d=arch.d, r=arch.r)
    batch = ArchBatch.from_archs(SPACE, [arch, other, SPACE.largest(160)])
    assert len(batch.unique()) == 2


# ---------------------------------------------------------------------- costs
@settings(max_examples=40, deadline=None)
@given(archs(SPACE))
def test_additive_costs_equal_exact_counts(net, costs, arch: Arch) -> None:
    assert costs["macs"].of(arch) == net.macs(arch)
    assert costs["params"].of(arch) == net.params(arch)


def test_additive_costs_equal_exact_counts_in_bulk(net, costs) -> None:
    batch = ArchBatch.sample(net.space, 300, np.random.default_rng(3))
    macs, params = costs["macs"](batch), costs["params"](batch)
    for arch, m, p in zip(batch.to_archs(), macs, params):
        assert (m, p) == (net.macs(arch), net.params(arch))


def test_additive_costs_of_wider_supernet() -> None:
    net = onceforall.create_supernet("ofa_mbv3_w1.2", num_classes=7)
    macs, params = macs_cost(net), params_cost(net)
    for arch in ArchBatch.sample(net.space, 50, np.random.default_rng(4)).to_archs():
        assert macs.of(arch) == net.macs(arch) and params.of(arch) == net.params(arch)


def test_latency_cost_from_a_table(net) -> None:
    table = MacsLatencyTable(net)
    cost = latency_cost(table, net.space)
    assert cost.name == "latency_ms" and cost.unit == "ms"
    batch = ArchBatch.sample(net.space, 200, np.random.default_rng(5))
    expected = [table.predict(a) for a in batch.to_archs()]
    np.testing.assert_allclose(cost(batch), expected, rtol=1e-12)


def test_exact_minimum_and_maximum(net, costs) -> None:
    low, arch = costs["macs"].minimum()
    assert low == net.macs(arch) == net.macs(net.space.smallest(min(net.space.resolutions)))
    high, arch = costs["macs"].maximum()
    assert high == net.macs(arch) == net.macs(net.space.largest())
    # A table with negative entries: not monotone in depth; check by enumeration.
    layout = genome_layout(TINY)
    rng = np.random.default_rng(6)
    cost = AdditiveCost("odd", rng.normal(size=2), rng.normal(size=layout.table_shape), "", TINY)
    values = cost.of_genes(all_genes(TINY))
    assert cost.minimum()[0] == pytest.approx(values.min(), abs=1e-12)
    assert cost.maximum()[0] == pytest.approx(values.max(), abs=1e-12)
    assert cost.of(cost.minimum()[1]) == pytest.approx(values.min(), abs=1e-12)


# ---------------------------------------------------------------- constraints
def test_parse_constraints(net, costs) -> None:
    available = dict(costs, latency_ms=latency_cost(MacsLatencyTable(net), net.space))
    c = parse_constraint("macs<=20M", available)
    assert c.cost is costs["macs"] and c.limit == 20e6
    assert parse_constraint(" params <= 3.5M ", available).limit == 3.5e6
    assert parse_constraint("latency_ms<=5", available).limit == 5.0
    assert parse_constraint("macs<=1.5G", available).limit == 1.5e9
    assert parse_constraint("params<=800k", available).limit == 8e5
    with pytest.raises(ValueError, match="unknown metric 'flops'.*latency_ms, macs, params"):
        parse_constraint("flops<=20M", available)
    with pytest.raises(ValueError, match="expected METRIC<=VALUE"):
        parse_constraint("macs<20M", available)
    with pytest.raises(ValueError, match="expected METRIC<=VALUE"):
        parse_constraint("macs<=", available)
    with pytest.raises(ValueError, match="unknown suffix 'X'"):
        parse_constraint("macs<=20X", available)
    with pytest.raises(ValueError, match="latency lookup table"):
        parse_constraint("latency_ms<=5", costs)


def test_impossible_constraint_names_the_reachable_minimum(net, costs) -> None:
    low = net.macs(net.space.smallest(min(net.space.resolutions)))
    constraints = [parse_constraint("macs<=10M", costs), parse_constraint("params<=100M", costs)]
    with pytest.raises(InfeasibleConstraintError) as info:
        evolutionary_search(net.space, linear_predictor(net.space), constraints, generations=1)
    message = str(info.value)
    assert f"({low})" in message and "40.21M MACs" in message and "macs<=10M" in message
    assert "params" not in message  # that one can be met


def test_jointly_infeasible_and_jointly_feasible_constraints() -> None:
    layout = genome_layout(TINY)
    k5 = np.zeros(layout.table_shape)
    k5[:, :, 1, :] = 1.0  # blocks with kernel 5
    k3 = 1.0 - k5
    count5 = AdditiveCost("k5_blocks", np.zeros(2), k5, "blocks", TINY)
    count3 = AdditiveCost("k3_blocks", np.zeros(2), k3, "blocks", TINY)
    rng = np.random.default_rng(7)
    # Every network has >= 2 blocks: no network has 0 blocks of kernel 3 and 0 of kernel 5.
    impossible = ConstraintSet(TINY, [Constraint(count5, 0), Constraint(count3, 0)])
    with pytest.raises(InfeasibleConstraintError, match="together"):
        impossible.check(rng)
    # At most 1 of each: feasible, but neither minimiser nor any weighted-sum minimiser is.
    tight = [Constraint(count5, 1), Constraint(count3, 1)]
    witness = ConstraintSet(TINY, tight).check(rng)
    assert ConstraintSet(TINY, tight).feasible(witness).all()
    result = evolutionary_search(TINY, linear_predictor(TINY), tight, generations=20)
    assert ConstraintSet(TINY, tight).feasible(result.population.genes).all()


# --------------------------------------------------------------------- search
def assert_feasible(net, archs_: list[Arch], limit_macs: float, limit_params: float) -> None:
    for arch in archs_:
        assert net.macs(arch) <= limit_macs and net.params(arch) <= limit_params


def test_evolution_returns_only_feasible_archs_and_beats_random(net, costs) -> None:
    constraints = [parse_constraint("macs<=150M", costs), parse_constraint("params<=4M", costs)]
    predictor = mlp_predictor(net.space)
    kwargs = dict(population=50, generations=40, seed=0)
    evo = evolutionary_search(net.space, predictor, constraints, **kwargs)
    rnd = random_search(net.space, predictor, constraints, **kwargs)
    assert evo.evaluated == rnd.evaluated == 50 * 41
    assert_feasible(net, [evo.arch, *evo.population.to_archs()], 150e6, 4e6)
    assert_feasible(net, [rnd.arch, *rnd.population.to_archs()], 150e6, 4e6)
    assert evo.costs == {"macs": net.macs(evo.arch), "params": net.params(evo.arch)}
    features = torch.from_numpy(net.space.encode(evo.arch))[None]
    assert evo.accuracy == pytest.approx(predictor(features).item(), abs=1e-6)
    assert evo.accuracy >= rnd.accuracy
    assert len(evo.history) == len(rnd.history) == 41
    assert (np.diff(evo.history) >= 0).all() and evo.history[-1] == evo.accuracy
    assert rnd.history[-1] == rnd.accuracy


def test_search_is_reproducible(net, costs) -> None:
    constraints = [parse_constraint("macs<=200M", costs)]
    predictor = linear_predictor(net.space)
    runs = [
        evolutionary_search(net.space, predictor, constraints, generations=30, seed=s)
        for s in (3, 3, 4)
    ]
    assert runs[0].arch == runs[1].arch
    np.testing.assert_array_equal(runs[0].population.genes, runs[1].population.genes)
    np.testing.assert_array_equal(runs[0].history, runs[1].history)
    assert not np.array_equal(runs[0].population.genes, runs[2].population.genes)
    fronts = [
        pareto_search(net.space, predictor, costs["macs"], generations=10, seed=1) for _ in range(2)
    ]
    assert fronts[0].archs == fronts[1].archs


def test_constraint_at_the_exact_minimum(net, costs) -> None:
    low, _ = costs["macs"].minimum()
    constraints = [Constraint(costs["macs"], low)]  # random sampling never hits this
    result = evolutionary_search(
        net.space, linear_predictor(net.space), constraints, population=20, generations=5
    )
    assert all(net.macs(a) == low for a in result.population.to_archs())
    rnd = random_search(net.space, linear_predictor(net.space), constraints, samples=10)
    assert net.macs(rnd.arch) == low


def test_pareto_front_is_feasible_and_non_dominated(net, costs) -> None:
    constraints = [parse_constraint("params<=5M", costs)]
    front = pareto_search(
        net.space,
        mlp_predictor(net.space, seed=1),
        [costs["macs"], costs["params"]],
        constraints,
        population=60,
        generations=40,
    )
    assert len(front) > 5
    assert_feasible(net, front.archs, np.inf, 5e6)
    np.testing.assert_array_equal(front.costs["macs"], [net.macs(a) for a in front.archs])
    points = np.column_stack([-front.accuracy, front.costs["macs"], front.costs["params"]])
    for i, j in itertools.permutations(range(len(points)), 2):
        assert not ((points[i] <= points[j]).all() and (points[i] < points[j]).any())
    assert (np.diff(front.costs["macs"]) >= 0).all()
    assert len({a for a in front.batch.to_archs(canonical=True)}) == len(front)
    # One cost: accuracy must increase along the front as MACs increase.
    single = pareto_search(net.space, linear_predictor(net.space), costs["macs"], generations=30)
    assert (np.diff(single.accuracy) > 0).all() and (np.diff(single.costs["macs"]) > 0).all()


def test_non_dominated_ranks_and_crowding() -> None:
    points = np.random.default_rng(8).random((200, 3)).round(1)  # many ties
    ranks = non_dominated_ranks(points)
    for i in range(len(points)):
        dominated_by = [
            j
            for j in range(len(points))
            if (points[j] <= points[i]).all() and (points[j] < points[i]).any()
        ]
        expected = 0 if not dominated_by else 1 + max(ranks[j] for j in dominated_by)
        assert ranks[i] == expected
    line = np.array([[0.0, 4.0], [1.0, 2.0], [2.0, 1.0], [4.0, 0.0]])
    distance = crowding_distance(line, np.zeros(4, dtype=int))
    assert np.isinf(distance[[0, 3]]).all()
    np.testing.assert_allclose(distance[1:3], [2 / 4 + 3 / 4, 3 / 4 + 2 / 4])


def test_predictor_checks(net) -> None:
    class Tagged(torch.nn.Module):
        def __init__(self, space: MBConvSpace) -> None:
            super().__init__()
            self.space = space
            self.linear = torch.nn.Linear(space.encoding_size, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x)[:, 0]

    features = ArchBatch.sample(net.space, 5, np.random.default_rng(9)).encode()
    assert as_predictor(Tagged(net.space), net.space)(features).shape == (5,)
    with pytest.raises(ValueError, match="another encoding"):
        as_predictor(Tagged(TINY), net.space)
    assert torch_predictor(mlp_predictor(net.space))(features).dtype == np.float64
    with pytest.raises(ValueError, match="one accuracy per architecture"):
        evolutionary_search(net.space, lambda f: f[:, :2], (), generations=1)


def test_search_under_a_latency_table_constraint(net, costs) -> None:
    table = MacsLatencyTable(net)
    latency = latency_cost(table, net.space)
    low, high = latency.minimum()[0], latency.maximum()[0]
    constraint = parse_constraint(f"latency_ms<={low + 0.3 * (high - low):.3f}", [latency])
    result = evolutionary_search(
        net.space,
        mlp_predictor(net.space, seed=2),
        [constraint],
        population=30,
        generations=20,
        extra_costs=[costs["macs"]],
    )
    assert all(table.predict(a) <= constraint.limit for a in result.population.to_archs())
    assert result.costs["latency_ms"] == pytest.approx(table.predict(result.arch), rel=1e-12)
    assert result.costs["macs"] == net.macs(result.arch)


# ---------------------------------------------------------------- OFA-ResNet50
@pytest.fixture(scope="module")
def resnet() -> onceforall.Supernet:
    return onceforall.create_supernet("ofa_resnet50", num_classes=10)


def test_resnet_genes_round_trip_and_keys_ignore_skipped_slots(resnet) -> None:
    space = resnet.space
    archs_ = [space.sample(i) for i in range(200)]
    batch = ArchBatch.from_archs(space, archs_)
    assert batch.to_archs(canonical=True) == [space.canonical(a) for a in archs_]
    assert [space.canonical(a) for a in batch.to_archs()] == [space.canonical(a) for a in archs_]
    np.testing.assert_array_equal(batch.encode(), np.stack([space.encode(a) for a in archs_]))
    # Two archs differing only in a skipped slot's expand ratio are one network.
    arch = space.smallest(160)
    skipped = space.stage_slots(0)[-1]
    other = arch.to_dict()
    other["e"][skipped] = max(space.expand_ratios)
    layout = genome_layout(space)
    keys = layout.network_keys(ArchBatch.from_archs(space, [arch, other]).genes)
    assert keys[0] == keys[1]
    # Mutation and crossover stay inside the space.
    rng = np.random.default_rng(0)
    children = batch.mutate(rng, prob=0.5).crossover(batch, rng)
    for child in children.to_archs():
        space.parse(child)


def test_resnet_search_meets_macs_and_params_and_beats_random(resnet) -> None:
    costs = {"macs": macs_cost(resnet), "params": params_cost(resnet)}
    for arch in (resnet.space.sample(i) for i in range(20)):
        assert costs["macs"].of(arch) == resnet.macs(arch)
        assert costs["params"].of(arch) == resnet.params(arch)
    low, smallest = costs["macs"].minimum()
    assert low == resnet.macs(smallest)
    with pytest.raises(InfeasibleConstraintError, match="smallest macs in this space"):
        evolutionary_search(
            resnet.space, linear_predictor(resnet.space), [Constraint(costs["macs"], low - 1)]
        )
    constraints = [parse_constraint("macs<=1.5G", costs), parse_constraint("params<=15M", costs)]
    predictor = linear_predictor(resnet.space)
    kwargs = dict(population=30, generations=15, seed=0)
    evo = evolutionary_search(resnet.space, predictor, constraints, **kwargs)
    rnd = random_search(resnet.space, predictor, constraints, **kwargs)
    assert_feasible(resnet, [evo.arch, *evo.population.to_archs()], 1.5e9, 15e6)
    assert_feasible(resnet, [rnd.arch, *rnd.population.to_archs()], 1.5e9, 15e6)
    assert evo.accuracy >= rnd.accuracy
    assert evo.accuracy == pytest.approx(float(predictor(resnet.space.encode(evo.arch)[None])[0]))
    front = pareto_search(resnet.space, predictor, costs["macs"], population=20, generations=5)
    assert all(resnet.macs(a) > 0 for a in front.archs)
