"""Rank policies, the CLI parser and the global budget allocator."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankwise.errors import ConfigError, RankError
from rankwise.surgery.rank import (
    VBMF,
    BudgetCandidate,
    EffectiveRank,
    Energy,
    Fixed,
    MacsBudget,
    ParamsBudget,
    Ratio,
    StableRank,
    ValueThreshold,
    allocate_budget,
    parse_rank,
    retained_energy,
    to_layer_rank,
)

S321 = torch.tensor([3.0, 2.0, 1.0])


# ----- per-layer policies -----------------------------------------------------------------------


def test_policies_hand_computed():
    assert Energy(0.9).select([S321], (3,)) == (2,)
    assert Energy(1.0).select([S321], (3,)) == (3,)
    assert ValueThreshold(1.5).select([S321], (3,)) == (2,)
    assert ValueThreshold(5.0).select([S321], (3,)) == (1,)  # at least 1
    assert EffectiveRank().select([torch.ones(4)], (4,)) == (4,)
    assert EffectiveRank(0.5).select([torch.ones(4)], (4,)) == (2,)
    assert EffectiveRank().select([torch.tensor([2.0, 1.0, 1.0])], (3,)) == (3,)  # 2^1.5 ≈ 2.83
    assert StableRank().select([torch.tensor([4.0, 3.0])], (2,)) == (2,)  # 25/16 -> 2
    assert StableRank(2.0).select([torch.tensor([4.0, 3.0, 0.0, 0.0])], (4,)) == (3,)  # 3.125


def test_fixed_and_ratio_need_no_spectra_and_are_clipped():
    assert Fixed(8).select([], (3,)) == (3,)
    assert Fixed(8).select([], (16, 4)) == (8, 4)
    assert Fixed((2, 5)).select([], (4, 4)) == (2, 4)
    assert Ratio(0.5).select([], (10, 7)) == (5, 3)
    assert Ratio(0.01).select([], (10,)) == (1,)


def test_two_dimensional_spectra_are_independent():
    flat, steep = torch.ones(8), torch.tensor([1.0] + [1e-3] * 7)
    assert Energy(0.9).select([flat, steep], (8, 8)) == (8, 1)
    assert EffectiveRank().select([flat, steep], (6, 8)) == (6, 1)  # clipped to max_rank


def test_policy_arity_errors():
    with pytest.raises(RankError, match="3 entries"):
        Fixed((1, 2, 3)).select([], (4, 4))
    with pytest.raises(RankError, match="one spectrum per rank dimension"):
        Energy(0.9).select([S321], (3, 3))
    with pytest.raises(RankError):
        Energy(0.9).select([S321], (0,))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Energy(0.0),
        lambda: Energy(1.01),
        lambda: Ratio(0.0),
        lambda: Ratio(1.5),
        lambda: Fixed(0),
        lambda: Fixed((2, 0)),
        lambda: Fixed(2.5),
        lambda: ValueThreshold(-1.0),
        lambda: ValueThreshold(float("inf")),
        lambda: EffectiveRank(0.0),
        lambda: StableRank(-1.0),
        lambda: ParamsBudget(0.0),
        lambda: MacsBudget(1.5),
    ],
)
def test_validation(make):
    with pytest.raises(ConfigError):
        make()


def test_budget_policies_are_global():
    p = ParamsBudget(0.3)
    assert p.is_global and p.metric == "params" and MacsBudget(0.3).metric == "macs"
    assert p != MacsBudget(0.3)
    with pytest.raises(ConfigError, match="global"):
        p.select([S321], (3,))


def _planted(p: int, q: int, r: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    signal = torch.randn(p, r, generator=g, dtype=torch.float64) @ torch.randn(
        r, q, generator=g, dtype=torch.float64
    )
    return signal + 0.05 * torch.randn(p, q, generator=g, dtype=torch.float64)


def test_vbmf_policy_needs_shapes():
    m = _planted(40, 60, 4, seed=0)
    assert VBMF().select_matrices([m]) == (4,)
    s = torch.linalg.svdvals(m)
    assert VBMF().select([s], (40,), shapes=[(40, 60)]) == (4,)
    with pytest.raises(ConfigError, match="shape"):
        VBMF().select([s], (40,))


def test_vbmf_policy_on_tucker_unfoldings():
    g = torch.Generator().manual_seed(5)
    core = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    u_out, _ = torch.linalg.qr(torch.randn(32, 4, generator=g, dtype=torch.float64))
    u_in, _ = torch.linalg.qr(torch.randn(16, 3, generator=g, dtype=torch.float64))
    w = torch.einsum("abhw,na,cb->nchw", core, u_out, u_in)
    w = w + 1e-3 * torch.randn(w.shape, generator=g, dtype=torch.float64)
    unfold_out = w.reshape(32, -1)
    unfold_in = w.transpose(0, 1).reshape(16, -1)
    assert VBMF().select_matrices([unfold_out, unfold_in], (32, 16)) == (4, 3)


def test_vbmf_policy_pure_noise_gives_rank_one():
    m = torch.randn(30, 50, generator=torch.Generator().manual_seed(2))
    assert VBMF().select_matrices([m]) == (1,)


# ----- parser -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, policy",
    [
        ("8", Fixed(8)),
        ("fixed:8", Fixed(8)),
        (" Fixed:16,8 ", Fixed((16, 8))),
        ("ratio:0.25", Ratio(0.25)),
        ("energy:0.9", Energy(0.9)),
        ("energy:1", Energy(1.0)),
        ("value:0.05", ValueThreshold(0.05)),
        ("value:1e-3", ValueThreshold(0.001)),
        ("erank", EffectiveRank()),
        ("erank:1.5", EffectiveRank(1.5)),
        ("stable", StableRank()),
        ("stable:2", StableRank(2.0)),
        ("vbmf", VBMF()),
        ("budget:params=0.3", ParamsBudget(0.3)),
        ("budget:macs=0.3", MacsBudget(0.3)),
    ],
)
def test_parse_rank(text, policy):
    assert parse_rank(text) == policy
    assert parse_rank(str(policy)) == policy


@pytest.mark.parametrize(
    "text", ["", "energy", "energy:abc", "foo:1", "budget:flops=0.3", "fixed:-1", "budget:params"]
)
def test_parse_rank_rejects_with_accepted_forms(text):
    with pytest.raises(ConfigError, match="accepted forms"):
        parse_rank(text)


@pytest.mark.parametrize("text", ["energy:1.5", "ratio:0", "fixed:0", "budget:macs=2"])
def test_parse_rank_range_errors(text):
    with pytest.raises(ConfigError):
        parse_rank(text)


unit = st.floats(min_value=0.01, max_value=1.0)
policies = st.one_of(
    st.integers(1, 64).map(Fixed),
    st.tuples(st.integers(1, 64), st.integers(1, 64)).map(Fixed),
    unit.map(Ratio),
    unit.map(Energy),
    st.floats(0.0, 5.0).map(ValueThreshold),
    st.floats(0.1, 4.0).map(EffectiveRank),
    st.floats(0.1, 4.0).map(StableRank),
    st.just(VBMF()),
)


@settings(max_examples=25, deadline=None)
@given(
    policy=policies,
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    limits=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    seed=st.integers(0, 1000),
    zero=st.booleans(),
)
def test_policies_stay_within_bounds(policy, shape, limits, seed, zero):
    m = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    mats = [torch.zeros_like(m) if zero else m, m.T.contiguous()]
    out = policy.select_matrices(mats, limits)
    assert len(out) == 2
    assert all(isinstance(r, int) and 1 <= r <= lim for r, lim in zip(out, limits, strict=True))
    assert parse_rank(str(policy)) == policy


# ----- global budget allocation -----------------------------------------------------------------


def _svd_candidate(name: str, s: torch.Tensor, p: int, q: int) -> BudgetCandidate:
    """A (p, q) matrix factorized as (p, r)(r, q): r·(p + q) params vs p·q dense."""
    return BudgetCandidate(name, [s], (min(p, q),), p * q, lambda r: r[0] * (p + q))


def _cost_ratio(cands, ranks, fixed_cost=0) -> float:
    before = fixed_cost + sum(c.dense_cost for c in cands)
    pairs = zip(cands, ranks, strict=True)
    after = fixed_cost + sum(c.dense_cost if r is None else c.cost(r) for c, r in pairs)
    return after / before


def _total_energy(cands, ranks) -> float:
    pairs = zip(cands, ranks, strict=True)
    return sum(1.0 if r is None else retained_energy(c.spectra, r) for c, r in pairs)


def test_budget_beats_uniform_ratio():
    steep = 0.5 ** torch.arange(64, dtype=torch.float64)  # energy concentrated in a few values
    flat = torch.ones(64, dtype=torch.float64)
    cands = [_svd_candidate("steep", steep, 64, 64), _svd_candidate("flat", flat, 64, 64)]
    uniform = [Ratio(0.25).select(c.spectra, c.max_rank) for c in cands]  # rank 16 each
    target = _cost_ratio(cands, uniform)
    assert target == pytest.approx(0.5)
    greedy = allocate_budget(cands, target, "params")
    assert _cost_ratio(cands, greedy) <= target + 1e-12
    assert _total_energy(cands, greedy) > _total_energy(cands, uniform) + 0.05
    assert greedy[0][0] < 16 < greedy[1][0]


def test_budget_matches_brute_force_when_costs_are_equal():
    # every rank unit costs 10 and dense is never reached: greedy == optimal knapsack
    g = torch.Generator().manual_seed(0)
    spectra = [torch.sort(torch.rand(n, generator=g), descending=True).values for n in (6, 5, 4)]
    cands = [
        BudgetCandidate(f"l{i}", [s], (s.numel(),), 10_000, lambda r: 10 * r[0])
        for i, s in enumerate(spectra)
    ]
    for units in (4, 7, 10, 15):
        target = units * 10 / 30_000
        greedy = allocate_budget(cands, target, "params")  # chunks of 1
        best = max(
            sum(retained_energy([s], (r,)) for s, r in zip(spectra, rs, strict=True))
            for rs in itertools.product(range(1, 7), range(1, 6), range(1, 5))
            if 10 * sum(rs) <= units * 10
        )
        assert _total_energy(cands, greedy) == pytest.approx(best, abs=1e-12)


def test_budget_keeps_dense_when_factorizing_cannot_save():
    s = torch.ones(1, dtype=torch.float64)
    vector = _svd_candidate("fc", s, 1, 50)  # rank 1 costs 51 > 50 dense
    big = _svd_candidate("conv", torch.linspace(2, 1, 32, dtype=torch.float64), 32, 64)
    out = allocate_budget([vector, big], 0.5, "params")
    assert out[0] is None
    assert out[1] is not None and 1 <= out[1][0] <= 32
    assert _cost_ratio([vector, big], out) <= 0.5


def test_budget_turns_layer_dense_when_affordable():
    cands = [
        _svd_candidate("a", torch.linspace(3, 1, 16, dtype=torch.float64), 16, 16),
        _svd_candidate("b", 0.3 ** torch.arange(16, dtype=torch.float64), 16, 64),
    ]
    out = allocate_budget(cands, 1.0, "params")
    for c, r in zip(cands, out, strict=True):  # a full budget loses nothing
        assert r is None or retained_energy(c.spectra, r) == pytest.approx(1.0)
    assert out[0] is None  # rank 8 of a 16x16 already costs the dense 256


def test_budget_multi_dimensional_rank():
    n = c = 64
    k = 9
    flat, steep = torch.ones(n, dtype=torch.float64), 0.5 ** torch.arange(c, dtype=torch.float64)
    cand = BudgetCandidate(
        "tucker", [flat, steep], (n, c), n * c * k, lambda r: c * r[1] + r[0] * r[1] * k + r[0] * n
    )
    other = _svd_candidate("fc", torch.linspace(2, 1, 32, dtype=torch.float64), 32, 100)
    out = allocate_budget([cand, other], 0.3, "macs", fixed_cost=5_000)
    assert _cost_ratio([cand, other], out, fixed_cost=5_000) <= 0.3 + 1e-12
    r_out, r_in = out[0]
    assert 1 <= r_in < r_out <= n  # the flat dimension gets the rank


def test_budget_unreachable_target():
    cands = [_svd_candidate("a", torch.ones(32, dtype=torch.float64), 32, 32)]  # rank 1: 64/1024
    with pytest.raises(ConfigError, match="unreachable.*0.0625"):
        allocate_budget(cands, 0.05, "params")
    with pytest.raises(ConfigError, match="unreachable"):  # fixed cost counts in the total
        allocate_budget(cands, 0.5, "params", fixed_cost=10_000)
    assert allocate_budget(cands, 0.0625, "params") == [(1,)]
    with pytest.raises(ConfigError):
        allocate_budget(cands, 0.5, "flops")
    with pytest.raises(ConfigError):
        allocate_budget(cands, 0.0, "params")


def test_budget_resnet50_scale_with_chunks():
    g = torch.Generator().manual_seed(1)
    cands = []
    for i, n in enumerate([64, 128, 256, 512, 1024, 2048] * 9):
        c, k = n // 2, 9
        sp = [torch.sort(torch.rand(m, generator=g) ** 3, descending=True).values for m in (n, c)]
        def cost(r, n=n, c=c, k=k):
            return c * r[1] + r[0] * r[1] * k + r[0] * n

        cands.append(BudgetCandidate(f"l{i}", sp, (n, c), n * c * k, cost))
    out = allocate_budget(cands, 0.25, "params", fixed_cost=100_000)
    ratio = _cost_ratio(cands, out, fixed_cost=100_000)
    assert 0.249 <= ratio <= 0.25  # chunks are refined one rank at a time near the budget
    for c, r in zip(cands, out, strict=True):
        assert r is None or all(1 <= x <= m for x, m in zip(r, c.max_rank, strict=True))


@settings(max_examples=25, deadline=None)
@given(
    dims=st.lists(st.tuples(st.integers(1, 24), st.integers(1, 24)), min_size=1, max_size=5),
    target=st.floats(0.01, 1.0),
    fixed=st.integers(0, 500),
    seed=st.integers(0, 1000),
)
def test_budget_property(dims, target, fixed, seed):
    g = torch.Generator().manual_seed(seed)
    cands = [
        _svd_candidate(f"l{i}", torch.linalg.svdvals(torch.randn(p, q, generator=g)), p, q)
        for i, (p, q) in enumerate(dims)
    ]
    before = fixed + sum(c.dense_cost for c in cands)
    minimal = fixed + sum(min(c.cost((1,)), c.dense_cost) for c in cands)
    if minimal > target * before * (1 + 1e-9):
        with pytest.raises(ConfigError):
            allocate_budget(cands, target, "params", fixed_cost=fixed)
        return
    out = allocate_budget(cands, target, "params", fixed_cost=fixed)
    assert _cost_ratio(cands, out, fixed) <= target * (1 + 1e-9)
    for c, r in zip(cands, out, strict=True):
        assert r is None or (1 <= r[0] <= c.max_rank[0] and c.cost(r) < c.dense_cost)


def test_to_layer_rank():
    assert to_layer_rank((5,)) == 5 and to_layer_rank((4, 3)) == (4, 3)
    assert math.isclose(retained_energy([S321], (2,)), 13 / 14)
    assert math.isclose(retained_energy([S321, S321], (2, 2)), 1 - 2 / 14)
