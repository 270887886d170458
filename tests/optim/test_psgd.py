"""Projected SGD / BFGS: steps stay in the span of P, the update rules, BFGS on quadratics."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankwise.errors import ConfigError
from rankwise.optim.psgd import (
    ProjectedBFGS,
    ProjectedSGD,
    flat_grads,
    flat_params,
    write_flat_,
)

torch.set_num_threads(1)
F64 = torch.float64


def orthonormal_rows(d: int, dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, d, generator=gen, dtype=F64))
    return q.T.contiguous()  # (d, D)


def two_params(seed: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(3, 4, generator=gen, dtype=F64)),
            torch.nn.Parameter(torch.randn(5, generator=gen, dtype=F64))]  # D = 17


def out_of_span(delta: torch.Tensor, p: torch.Tensor) -> float:
    """‖δ − PᵀPδ‖: the part of δ outside the row space of P."""
    return float((delta - p.T @ (p @ delta)).norm())


def test_flatten_roundtrip_and_missing_grads_are_zero():
    params = two_params(0)
    flat = flat_params(params)
    assert flat.shape == (17,)
    write_flat_(params, flat * 2)
    assert torch.allclose(flat_params(params), flat * 2)
    params[0].grad = torch.ones(3, 4, dtype=F64)
    assert torch.equal(flat_grads(params), torch.cat([torch.ones(12, dtype=F64),
                                                      torch.zeros(5, dtype=F64)]))


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 6), momentum=st.sampled_from([0.0, 0.9]), seed=st.integers(0, 999))
def test_psgd_steps_stay_in_rowspace(d, momentum, seed):
    params = two_params(seed)
    p = orthonormal_rows(d, 17, seed + 1)
    opt = ProjectedSGD(params, p, lr=0.3, momentum=momentum, weight_decay=1e-2)
    start = flat_params(params)
    gen = torch.Generator().manual_seed(seed + 2)
    for _ in range(3):
        for q in params:  # arbitrary full-space gradients
            q.grad = torch.randn(q.shape, generator=gen, dtype=F64)
        before = flat_params(params)
        opt.step()
        step = flat_params(params) - before
        assert out_of_span(step, p) < 1e-10 * max(1.0, float(step.norm()))
    moved = flat_params(params) - start
    assert out_of_span(moved, p) < 1e-10
    assert torch.allclose(p @ moved, opt.coords)  # z tracks the coordinates


def test_psgd_update_rule_with_momentum():
    params = two_params(1)
    p = orthonormal_rows(3, 17, 2)
    opt = ProjectedSGD(params, p, lr=0.5, momentum=0.9)
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(17, generator=gen, dtype=F64) for _ in range(2)]
    theta0 = flat_params(params)
    for g in grads:
        params[0].grad = g[:12].view(3, 4).clone()
        params[1].grad = g[12:].clone()
        opt.step()
    b1 = p @ grads[0]  # heavy ball in the coordinates: b1 = g1, b2 = 0.9 b1 + g2
    b2 = 0.9 * b1 + p @ grads[1]
    assert torch.allclose(flat_params(params), theta0 - 0.5 * p.T @ (b1 + b2), atol=1e-12)
    assert torch.allclose(opt.coords, -0.5 * (b1 + b2), atol=1e-12)


def quadratic(dim: int, seed: int):
    """f(θ) = ½ (θ − c)ᵀ A (θ − c) with A SPD (eigenvalues in [0.5, ~3])."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(dim, dim, generator=gen, dtype=F64)
    a = m @ m.T / dim + 0.5 * torch.eye(dim, dtype=F64)
    c = torch.randn(dim, generator=gen, dtype=F64)
    return a, c


def subspace_minimum(a, c, p, theta0):
    """argmin of f over θ0 + rowspace(P): z* solves (P A Pᵀ) z = P A (c − θ0)."""
    z = torch.linalg.solve(p @ a @ p.T, p @ a @ (c - theta0))
    return theta0 + p.T @ z


def run_bfgs(a, c, p, theta, opt, iters):
    f = lambda: 0.5 * (theta - c) @ a @ (theta - c)  # noqa: E731
    path = []
    for _ in range(iters):
        opt.zero_grad()
        f().backward()
        opt.step(f)
        path.append(theta.detach().clone())
    return path


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 6), seed=st.integers(0, 999))
def test_pbfgs_exact_line_search_minimizes_quadratic_in_d_plus_2_iterations(d, seed):
    dim = 10
    a, c = quadratic(dim, seed)
    p = orthonormal_rows(d, dim, seed + 7)
    theta = torch.nn.Parameter(torch.randn(dim, generator=torch.Generator().manual_seed(seed),
                                           dtype=F64))
    theta0 = theta.detach().clone()
    target = subspace_minimum(a, c, p, theta0)
    opt = ProjectedBFGS([theta], p, line_search="interpolate")
    path = run_bfgs(a, c, p, theta, opt, d + 2)
    scale = float((theta0 - target).norm()) + 1.0
    assert float((path[-1] - target).norm()) < 1e-7 * scale
    assert out_of_span(path[-1] - theta0, p) < 1e-10


def test_pbfgs_code_backtracking_converges_and_keeps_armijo():
    dim, d = 12, 5
    a, c = quadratic(dim, 3)
    p = orthonormal_rows(d, dim, 4)
    theta = torch.nn.Parameter(torch.zeros(dim, dtype=F64))
    target = subspace_minimum(a, c, p, torch.zeros(dim, dtype=F64))
    opt = ProjectedBFGS([theta], p)  # DLDR: ρ = 0.4, c1 = 0.4, ≤ 20 trials

    def f() -> torch.Tensor:
        return 0.5 * (theta - c) @ a @ (theta - c)

    values = [float(f().detach())]
    for _ in range(60):
        run_bfgs(a, c, p, theta, opt, 1)
        values.append(float(f().detach()))
        if float((theta.detach() - target).norm()) < 1e-6:
            break
    assert float((theta.detach() - target).norm()) < 1e-6
    assert all(b < a_ for a_, b in zip(values, values[1:], strict=False))  # Armijo: decrease
    st_ = opt.sub_state
    assert st_["failed_searches"] == 0 and st_["total_trials"] >= st_["step"]
    h = opt.inverse_hessian
    assert torch.allclose(h, h.T, atol=1e-10)
    assert torch.linalg.eigvalsh(h).min() > 0  # BFGS keeps H positive definite


def test_pbfgs_state_dict_roundtrip_continues_identically():
    dim, d = 8, 3
    a, c = quadratic(dim, 5)
    p = orthonormal_rows(d, dim, 6)
    t1 = torch.nn.Parameter(torch.zeros(dim, dtype=F64))
    o1 = ProjectedBFGS([t1], p)
    run_bfgs(a, c, p, t1, o1, 2)
    t2 = torch.nn.Parameter(t1.detach().clone())
    o2 = ProjectedBFGS([t2], p)
    o2.load_state_dict(o1.state_dict())
    p1 = run_bfgs(a, c, p, t1, o1, 2)
    p2 = run_bfgs(a, c, p, t2, o2, 2)
    assert torch.equal(p1[-1], p2[-1])


def test_errors():
    params = two_params(0)
    with pytest.raises(ConfigError, match="D=17"):
        ProjectedSGD(params, orthonormal_rows(2, 16, 0))
    with pytest.raises(ConfigError, match="closure"):
        opt = ProjectedBFGS(params, orthonormal_rows(2, 17, 0))
        opt.step()
    with pytest.raises(ConfigError, match="one lr"):
        ProjectedSGD([{"params": [params[0]], "lr": 1.0}, {"params": [params[1]], "lr": 0.1}],
                     orthonormal_rows(2, 17, 0))
