"""The general Lp ball: special cases agree with L1/L2/L∞, LMO optimality, norm and diameter."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankwise.errors import ConfigError
from rankwise.optim import L1Ball, L2Ball, LInfBall, LpBall, make_constraint, make_param_groups
from rankwise.optim.constraints_lp import lp_norm

D = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def inner(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


@pytest.mark.parametrize("p, ref", [(1.0, L1Ball), (2.0, L2Ball), (math.inf, LInfBall)])
def test_special_cases_agree_with_existing_balls(p: float, ref: type) -> None:
    g = torch.randn(4, 3, generator=gen(1), dtype=D)
    x = torch.randn(4, 3, generator=gen(2), dtype=D)
    n = g.numel()
    ours = LpBall(n, p, diameter=3.0)
    theirs = ref(n, diameter=3.0) if ref is LInfBall else ref(diameter=3.0)
    assert ours.radius == pytest.approx(theirs.radius)
    assert torch.allclose(ours.lmo(g), theirs.lmo(g), atol=1e-12)
    assert ours.norm(x) == pytest.approx(theirs.norm(x), rel=1e-12)


def test_p_near_special_cases_is_continuous() -> None:
    """p → 1⁺ tends to the L1 vertex, large p to the L∞ vertex (no overflow for q huge)."""
    g = torch.randn(20, generator=gen(3), dtype=D)
    near_l1 = LpBall(20, 1.0 + 1e-3, radius=1.0).lmo(g)
    near_inf = LpBall(20, 1e3, radius=1.0).lmo(g)
    assert torch.isfinite(near_l1).all() and torch.isfinite(near_inf).all()
    assert torch.allclose(near_l1, L1Ball(radius=1.0).lmo(g), atol=1e-6)
    assert torch.allclose(near_inf, LInfBall(20, radius=1.0).lmo(g), atol=1e-2)


@settings(max_examples=15, deadline=None)
@given(p=st.floats(1.0, 12.0), seed=st.integers(0, 10_000), n=st.integers(1, 9))
def test_lmo_value_is_minus_r_times_dual_norm_and_beats_random_points(p, seed, n) -> None:
    g = torch.randn(n, generator=gen(seed), dtype=D)
    c = LpBall(n, p, radius=0.8)
    v = c.lmo(g)
    assert c.is_feasible(v, tol=1e-9)
    q = math.inf if p == 1.0 else p / (p - 1.0)
    m = float(g.abs().max())
    dual = m if math.isinf(q) else m * float(((g.abs() / m) ** q).sum() ** (1 / q))
    assert inner(g, v) == pytest.approx(-0.8 * dual, rel=1e-7, abs=1e-12)
    # 150 feasible points: Gaussian, sparse and sign vectors scaled onto the ball
    pts = torch.randn(150, n, generator=gen(seed + 1), dtype=D)
    pts[50:100] *= torch.rand(50, n, generator=gen(seed + 2), dtype=D) < 0.3
    pts[100:] = torch.sign(pts[100:])
    for x in pts:
        nx = lp_norm(x, p)
        if nx > 0:
            assert inner(g, v) <= inner(g, x * (0.8 / nx)) + 1e-12


def test_lmo_matches_enumerated_vertices_for_p1_and_pinf() -> None:
    n, r = 4, 0.6
    g = torch.randn(n, generator=gen(7), dtype=D)
    eye = torch.eye(n, dtype=D)
    l1_vertices = [s * r * eye[i] for i in range(n) for s in (-1, 1)]
    inf_vertices = [r * torch.tensor(s, dtype=D) for s in itertools.product((-1, 1), repeat=n)]
    for p, vertices in ((1.0, l1_vertices), (math.inf, inf_vertices)):
        v = LpBall(n, p, radius=r).lmo(g)
        assert inner(g, v) == pytest.approx(min(inner(g, u) for u in vertices), abs=1e-12)


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0, 7.0, math.inf])
def test_diameter_is_attained_by_a_feasible_pair(p: float) -> None:
    """`D = 2 max ‖x‖₂` over the ball: the maximizer for p ≤ 2 is r·e₁, for p ≥ 2 r·n^(−1/p)·1."""
    n, r = 9, 1.3
    c = LpBall(n, p, radius=r)
    e1 = torch.zeros(n, dtype=D)
    e1[0] = r
    flat = torch.full((n,), r * (0.0 if math.isinf(p) else n ** (-1 / p)) if not math.isinf(p)
                      else r, dtype=D)
    best = max(float(torch.linalg.vector_norm(e1)), float(torch.linalg.vector_norm(flat)))
    assert c.is_feasible(e1) and c.is_feasible(flat)
    assert c.diameter == pytest.approx(2 * best, rel=1e-12)
    # no random feasible point is farther from 0 than D/2
    x = torch.randn(500, n, generator=gen(9), dtype=D)
    x = x / torch.tensor([lp_norm(row, p) for row in x], dtype=D)[:, None] * r
    assert float(torch.linalg.vector_norm(x, dim=1).max()) <= c.diameter / 2 + 1e-12


def test_zero_gradient_gives_zero_and_float32_keeps_dtype() -> None:
    c = LpBall(6, 3.0, radius=1.0)
    assert torch.equal(c.lmo(torch.zeros(2, 3)), torch.zeros(2, 3))
    g = torch.randn(2, 3, generator=gen(4))
    assert c.lmo(g).dtype == torch.float32


def test_factory_param_groups_and_errors() -> None:
    c = make_constraint("lp", (4, 5), p=3.0, diameter=2.0)
    assert isinstance(c, LpBall) and c.n == 20 and c.spec()["p"] == 3.0
    with pytest.raises(ConfigError, match="p="):
        make_constraint("lp", (4, 5), diameter=2.0)
    for bad in (0.5, float("nan")):
        with pytest.raises(ConfigError, match="p must be >= 1"):
            LpBall(4, bad, radius=1.0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    groups = make_param_groups(model, "lp", p=1.5, width=1.0, samples=2)
    assert [type(g["constraint"]) for g in groups] == [LpBall, LpBall]
    assert all(g["constraint"].p == 1.5 for g in groups)
