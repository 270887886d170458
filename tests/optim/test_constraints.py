"""Constraint sets: LMO optimality (brute force), feasibility, norms, radii and param groups."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rankwise.errors import ConfigError
from rankwise.optim import (
    CONSTRAINTS,
    GroupKSupportBall,
    KSparsePolytope,
    KSupportBall,
    L1Ball,
    L2Ball,
    LInfBall,
    NuclearBall,
    SpectralKSparsePolytope,
    SpectralKSupportBall,
    Unconstrained,
    diameter_from_init,
    expected_init_norm,
    k_support_norm,
    make_constraint,
    make_param_groups,
    radius_from_init,
    resolve_k,
    shift_model_to_feasible,
)

D = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def inner(g, v) -> float:
    if isinstance(g, torch.Tensor):
        return float((g * v).sum())
    return float(sum((a * b).sum() for a, b in zip(g, v, strict=True)))


def all_sets(shape=(6, 3, 2, 2), k=2, method="exact"):
    """One instance of every bounded set for a tensor of `shape` (radius 1.5)."""
    n = math.prod(shape)
    return [
        L2Ball(radius=1.5), L1Ball(radius=1.5), LInfBall(n, radius=1.5),
        KSparsePolytope(n, k, radius=1.5), KSupportBall(n, k, radius=1.5),
        GroupKSupportBall(shape[0], k, radius=1.5), NuclearBall(radius=1.5, method=method),
        SpectralKSparsePolytope(min(shape[0], n // shape[0]), k, radius=1.5, method=method),
        SpectralKSupportBall(min(shape[0], n // shape[0]), k, radius=1.5, method=method),
    ]


def random_feasible(c, shape, count: int, seed: int) -> list[torch.Tensor]:
    """Points of `c`: Gaussian, sparse and low-rank directions scaled to a random norm <= r."""
    g = gen(seed)
    out = []
    for i in range(count):
        x = torch.randn(shape, generator=g, dtype=D)
        if i % 3 == 1:  # sparse
            x = x * (torch.rand(shape, generator=g, dtype=D) < 0.15)
        elif i % 3 == 2:  # rank one in the flatten(1) view
            a = torch.randn(shape[0], 1, generator=g, dtype=D)
            b = torch.randn(1, math.prod(shape[1:]), generator=g, dtype=D)
            x = (a @ b).view(shape)
        n = c.norm(x)
        if n == 0:
            continue
        scale = 1.0 if i % 2 else float(torch.rand(1, generator=g, dtype=D))
        out.append(x * (c.radius * scale / n))
    return out


# ---------------------------------------------------------------- brute force over vertices


def test_l1_linf_k_sparse_lmo_equal_best_vertex() -> None:
    n, k, r = 5, 2, 0.7
    g = torch.randn(n, generator=gen(0), dtype=D)
    eye = torch.eye(n, dtype=D)
    l1 = [s * r * eye[i] for i in range(n) for s in (-1, 1)]
    linf = [r * torch.tensor(sig, dtype=D) for sig in itertools.product((-1, 1), repeat=n)]
    ksparse = []
    for idx in itertools.combinations(range(n), k):
        for sig in itertools.product((-1, 1), repeat=k):
            v = torch.zeros(n, dtype=D)
            v[list(idx)] = r * torch.tensor(sig, dtype=D)
            ksparse.append(v)
    cases = [(L1Ball(radius=r), l1), (LInfBall(n, radius=r), linf),
             (KSparsePolytope(n, k, radius=r), ksparse)]
    for c, vertices in cases:
        v = c.lmo(g)
        assert c.is_feasible(v)
        best = min(inner(g, u) for u in vertices)
        assert inner(g, v) == pytest.approx(best, abs=1e-12), c.name
        # every vertex lies in the set and on its boundary
        assert all(c.norm(u) == pytest.approx(r) for u in vertices)


@pytest.mark.parametrize("index", range(9))
def test_lmo_beats_1000_random_feasible_points(index: int) -> None:
    shape = (6, 3, 2, 2)
    c = all_sets(shape)[index]
    g = torch.randn(shape, generator=gen(index), dtype=D)
    v = c.lmo(g)
    assert v.shape == g.shape and c.is_feasible(v)
    value = inner(g, v)
    points = random_feasible(c, shape, 1000, seed=100 + index)
    assert len(points) > 900
    assert all(c.is_feasible(x) for x in points[:50])
    assert value <= min(inner(g, x) for x in points) + 1e-12


def _top(s: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(s.abs(), descending=True).values[:k]


def test_lmo_values_equal_dual_norms() -> None:
    """min_{v∈C} ⟨g, v⟩ = −r · (dual norm of g), computed independently."""
    shape, k, r = (6, 3, 2, 2), 2, 1.5
    g = torch.randn(shape, generator=gen(11), dtype=D)
    m = g.flatten(1)
    sig = torch.linalg.svdvals(m)
    filt = torch.linalg.vector_norm(m, dim=1)
    dual = [
        torch.linalg.vector_norm(g), g.abs().max(), g.abs().sum(), _top(g.flatten(), k).sum(),
        torch.linalg.vector_norm(_top(g.flatten(), k)), torch.linalg.vector_norm(_top(filt, k)),
        sig[0], sig[:k].sum(), torch.linalg.vector_norm(sig[:k]),
    ]
    for c, dn in zip(all_sets(shape, k), dual, strict=True):
        assert inner(g, c.lmo(g)) == pytest.approx(-r * float(dn), rel=1e-9), c.name


def test_power_method_lmos_are_near_optimal_in_float32() -> None:
    g = torch.randn(16, 8, 3, 3, generator=gen(5))
    sig = torch.linalg.svdvals(g.flatten(1).double())
    for c, best in [
        (NuclearBall(radius=1.0, method="power"), sig[0]),
        (SpectralKSparsePolytope(16, 4, radius=1.0, method="power"), sig[:4].sum()),
        (SpectralKSupportBall(16, 4, radius=1.0, method="power"),
         torch.linalg.vector_norm(sig[:4])),
    ]:
        v = c.lmo(g)
        assert v.dtype == torch.float32 and c.is_feasible(v, tol=1e-4)
        assert -inner(g, v) == pytest.approx(float(best), rel=2e-2), c.name


# ---------------------------------------------------------------- feasibility and conventions


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 7), c_in=st.integers(1, 5), kk=st.integers(1, 3), seed=st.integers(0, 99),
    k_frac=st.sampled_from([0.2, 0.5, 1.0]),
)
def test_lmo_is_feasible_and_has_l2_norm_half_diameter(n, c_in, kk, seed, k_frac) -> None:
    shape = (n, c_in, kk, kk)
    numel = math.prod(shape)
    g = torch.randn(shape, generator=gen(seed))
    for name in CONSTRAINTS[:-1]:
        c = make_constraint(name, shape, k=k_frac, diameter=3.0, method="exact")
        v = c.lmo(g)
        assert c.is_feasible(v, tol=1e-4), name
        # ‖v‖₂ = D/2 for an LMO vertex of every set here, so lmo(g) − lmo(−g) spans D
        assert float(torch.linalg.vector_norm(v)) == pytest.approx(1.5, rel=1e-4), name
        assert c.diameter == pytest.approx(3.0)
    assert make_constraint("linf", shape, diameter=3.0).radius == pytest.approx(
        1.5 / math.sqrt(numel))


def test_radius_diameter_conventions_by_hand() -> None:
    assert L2Ball(diameter=4.0).radius == 2.0 and L1Ball(radius=1.0).diameter == 2.0
    assert LInfBall(16, radius=1.0).diameter == pytest.approx(8.0)
    assert KSparsePolytope(100, 4, diameter=8.0).radius == pytest.approx(2.0)
    assert KSupportBall(100, 4, diameter=8.0).radius == pytest.approx(4.0)
    assert SpectralKSparsePolytope(10, 9, diameter=6.0).radius == pytest.approx(1.0)
    assert SpectralKSupportBall(10, 9, diameter=6.0).radius == pytest.approx(3.0)
    assert NuclearBall(diameter=6.0).radius == pytest.approx(3.0)
    with pytest.raises(ConfigError):
        L2Ball(radius=1.0, diameter=2.0)
    with pytest.raises(ConfigError):
        L2Ball()
    with pytest.raises(ConfigError):
        L2Ball(radius=-1.0)


def test_resolve_k() -> None:
    assert resolve_k(3, 10) == 3 and resolve_k(30, 10) == 10
    assert resolve_k(0.3, 10) == 3 and resolve_k(0.01, 10) == 1 and resolve_k(1.0, 7) == 7
    assert resolve_k(1, 7) == 1
    for bad in (0, -2, 0.0, 1.5, True, "3"):
        with pytest.raises(ConfigError):
            resolve_k(bad, 10)


def _k_support_by_condition(x: torch.Tensor, k: int) -> float:
    """Argyriou et al. (2012), Prop. 2.1: find the unique r by its two-sided condition."""
    z = sorted((abs(float(t)) for t in x), reverse=True)
    d = len(z)
    for r in range(k):
        tail = sum(z[k - r - 1:])
        left = math.inf if k - r - 2 < 0 else z[k - r - 2]
        if left > tail / (r + 1) >= z[k - r - 1] - 1e-12:
            return math.sqrt(sum(t * t for t in z[:k - r - 1]) + tail ** 2 / (r + 1))
    raise AssertionError(f"no r found for d={d}")


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 12), k=st.integers(1, 12), seed=st.integers(0, 999))
def test_k_support_norm(d: int, k: int, seed: int) -> None:
    k = min(k, d)
    x = torch.randn(d, generator=gen(seed), dtype=D)
    x = x * (torch.rand(d, generator=gen(seed + 1), dtype=D) < 0.7)
    value = k_support_norm(x, k)
    assert value == pytest.approx(_k_support_by_condition(x, k), rel=1e-9, abs=1e-12)
    if k == 1:
        assert value == pytest.approx(float(x.abs().sum()))
    if k == d:
        assert value == pytest.approx(float(torch.linalg.vector_norm(x)))


def test_shift_to_feasible_and_zero_gradients() -> None:
    shape = (6, 3, 2, 2)
    x = 10 * torch.randn(shape, generator=gen(2))
    for c in all_sets(shape):
        y = c.shift_to_feasible(x)
        assert c.norm(y) == pytest.approx(c.radius, rel=1e-5)
        inside = y * 0.5
        assert torch.equal(c.shift_to_feasible(inside), inside)
        v = c.lmo(torch.zeros(shape))
        assert torch.isfinite(v).all() and c.is_feasible(v), c.name
    for c in all_sets(shape)[:6] + all_sets(shape)[6:7]:
        assert torch.count_nonzero(c.lmo(torch.zeros(shape))) == 0, c.name


def test_multi_tensor_groups_and_errors() -> None:
    a, b = torch.randn(4, 3, generator=gen(0)), torch.randn(5, 3, generator=gen(1))
    c = GroupKSupportBall(9, 2, radius=1.0)
    va, vb = c.lmo([a, b])
    norms = torch.cat([va.norm(dim=1), vb.norm(dim=1)])
    assert int((norms > 0).sum()) == 2 and c.is_feasible([va, vb])
    top = torch.topk(torch.cat([a.norm(dim=1), b.norm(dim=1)]), 2).indices
    assert set(torch.nonzero(norms).flatten().tolist()) == set(top.tolist())
    kv = KSupportBall(27, 3, radius=2.0).lmo([a, b])
    assert [t.shape for t in kv] == [a.shape, b.shape]
    with pytest.raises(ConfigError):
        NuclearBall(radius=1.0).lmo([a, b])
    with pytest.raises(ConfigError):
        Unconstrained().lmo(a)
    assert Unconstrained().is_feasible(1e9 * a)
    with pytest.raises(ConfigError):
        make_constraint("nuclear", (8,), diameter=1.0)
    with pytest.raises(ConfigError):
        make_constraint("k-support", (8, 2), diameter=1.0)
    with pytest.raises(ConfigError):
        make_constraint("trace", (8, 2), diameter=1.0)


# ---------------------------------------------------------------- radius from initialization


def test_expected_init_norm_matches_closed_form_and_leaves_module_alone() -> None:
    lin = nn.Linear(50, 20)
    before = lin.weight.detach().clone()
    torch.manual_seed(0)
    expected_rng = torch.rand(2)
    torch.manual_seed(0)
    value = expected_init_norm(lin, samples=20)
    assert torch.equal(torch.rand(2), expected_rng)  # global RNG untouched
    assert torch.equal(lin.weight, before)  # module untouched
    # U(±1/√fan_in): E‖W‖² = numel / (3 fan_in); the norm concentrates for 1000 entries
    closed = math.sqrt(20 * 50 / (3 * 50))
    assert value == pytest.approx(closed, rel=0.02)
    assert expected_init_norm((20, 50), samples=20) == pytest.approx(closed, rel=0.02)
    from_factory = expected_init_norm(lambda: nn.Linear(50, 20), samples=5)
    assert from_factory == pytest.approx(closed, rel=0.02)
    bn = nn.BatchNorm2d(9)
    assert expected_init_norm(bn, "weight", samples=2) == pytest.approx(3.0)
    assert expected_init_norm(bn, "bias", samples=2) == 1.0  # zero init counts as 1
    assert radius_from_init(lin, 10.0, samples=5) == pytest.approx(10 * closed, rel=0.02)
    assert diameter_from_init(lin, 10.0, samples=5) == pytest.approx(
        2 * radius_from_init(lin, 10.0, samples=5))
    with pytest.raises(ConfigError):
        expected_init_norm((5,), samples=2)


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 6, 3, bias=False), nn.Flatten(), nn.Linear(6, 4),
    )


def test_make_param_groups_structured_and_shift() -> None:
    torch.manual_seed(0)
    model = tiny_net()
    groups = make_param_groups(model, "spectral-k-support", k=0.5, width=2.0, samples=3)
    by_name = {g["name"]: g["constraint"] for g in groups}
    assert set(by_name) == {n for n, _ in model.named_parameters()}
    assert isinstance(by_name["0.weight"], SpectralKSupportBall) and by_name["0.weight"].k == 4
    assert isinstance(by_name["3.weight"], SpectralKSupportBall) and by_name["3.weight"].k == 3
    for name in ("0.bias", "1.weight", "1.bias", "5.weight", "5.bias"):
        assert isinstance(by_name[name], L2Ball), name
    conv = model[0]
    d = diameter_from_init(conv, 2.0, "weight", samples=3)
    assert by_name["0.weight"].diameter == pytest.approx(d)
    with_linear = make_param_groups(model, "nuclear", width=2.0, samples=2, include_linear=True)
    assert isinstance({g["name"]: g["constraint"] for g in with_linear}["5.weight"], NuclearBall)
    flat_groups = make_param_groups(model, "k-sparse", k=0.5, samples=2)
    assert all(isinstance(g["constraint"], KSparsePolytope) for g in flat_groups)
    with pytest.raises(ConfigError):
        make_param_groups(model, "spectral", samples=1)

    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1000.0).add_(1.0)
    moved = shift_model_to_feasible(model, groups)
    assert set(moved) == set(by_name)
    assert all(g["constraint"].is_feasible(g["params"]) for g in groups)
    assert shift_model_to_feasible(model, groups) == []
    with pytest.raises(ConfigError):
        shift_model_to_feasible(nn.Linear(2, 2), groups)
