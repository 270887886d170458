"""Top-K singular triplets: block power iteration + QR, exact and randomized paths."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankwise.errors import ConfigError, RankError
from rankwise.linalg.topk_svd import (
    block_power_svd,
    exact_topk_svd,
    lowrank_topk_svd,
    random_basis,
    topk_svd,
)


def separated(p: int, q: int, seed: int, decay: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Matrix `(p, q)` float64 with singular values 10·decay^i (well separated) and its σ."""
    gen = torch.Generator().manual_seed(seed)
    r = min(p, q)
    u = torch.linalg.qr(torch.randn(p, r, generator=gen, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(q, r, generator=gen, dtype=torch.float64)).Q
    s = 10.0 * decay ** torch.arange(r, dtype=torch.float64)
    return (u * s) @ v.mT, s


def assert_matches_svd(out, m: torch.Tensor, k: int, atol: float) -> None:
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    torch.testing.assert_close(out.S, s[:k].to(out.S.dtype), atol=atol, rtol=atol)
    # singular vectors agree up to one sign per pair
    cos_u = (out.U.mT @ u[:, :k].to(out.U.dtype)).diagonal().abs()
    cos_v = (out.Vh @ vh[:k].mT.to(out.Vh.dtype)).diagonal().abs()
    torch.testing.assert_close(cos_u, torch.ones_like(cos_u), atol=atol, rtol=0)
    torch.testing.assert_close(cos_v, torch.ones_like(cos_v), atol=atol, rtol=0)
    # and the signs are consistent within a pair: U diag(S) Vh is the truncated SVD
    approx = (u[:, :k] * s[:k]) @ vh[:k]
    torch.testing.assert_close((out.U * out.S) @ out.Vh, approx.to(out.U.dtype), atol=atol * 10,
                               rtol=0)


@settings(max_examples=25, deadline=None)
@given(p=st.integers(2, 24), q=st.integers(2, 24), k=st.integers(1, 4), seed=st.integers(0, 999))
def test_block_power_matches_svd_for_separated_spectra(p: int, q: int, k: int, seed: int) -> None:
    m, _ = separated(p, q, seed)
    k = min(k, p, q)
    out = block_power_svd(m, k, steps=30, seed=seed)
    assert out.U.shape == (p, k) and out.S.shape == (k,) and out.Vh.shape == (k, q)
    assert out.S.dtype == torch.float64
    assert_matches_svd(out, m, k, atol=1e-6)
    eye = torch.eye(k, dtype=torch.float64)
    torch.testing.assert_close(out.U.mT @ out.U, eye, atol=1e-10, rtol=0)
    torch.testing.assert_close(out.Vh @ out.Vh.mT, eye, atol=1e-10, rtol=0)


def test_default_steps_float32_gaussian_close_to_exact() -> None:
    gen = torch.Generator().manual_seed(3)
    m = torch.randn(64, 40, generator=gen)
    m[:, :4] *= torch.tensor([20.0, 12.0, 7.0, 4.0])  # separated leading spectrum
    out = block_power_svd(m, 4)  # 10 steps, float32
    assert out.S.dtype == torch.float32
    assert_matches_svd(out, m, 4, atol=1e-3)


def test_warm_start_converges_in_one_step() -> None:
    m, _ = separated(30, 20, 0, decay=0.9)  # slow decay: one cold step is not enough
    exact = exact_topk_svd(m, 3)
    cold = block_power_svd(m, 3, steps=1, seed=1)
    warm = block_power_svd(m, 3, steps=1, v0=exact.Vh.mT)
    err_cold = (cold.S - exact.S).abs().max()
    err_warm = (warm.S - exact.S).abs().max()
    assert err_warm < 1e-10 < err_cold
    # a basis of the wrong shape is ignored rather than crashing
    block_power_svd(m, 3, steps=2, v0=torch.ones(5, 3, dtype=torch.float64))


def test_exact_and_lowrank_paths() -> None:
    m, _ = separated(40, 25, 7)
    for method in ("exact", "lowrank"):
        out = topk_svd(m, 5, method, steps=6)
        assert_matches_svd(out, m, 5, atol=1e-6)
    out = lowrank_topk_svd(m.float(), 2)
    assert out.S.dtype == torch.float32 and out.U.shape == (40, 2)


def test_seeded_and_leaves_global_rng_alone() -> None:
    m = torch.randn(20, 15, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = block_power_svd(m, 2, steps=2, seed=5)
    lowrank_topk_svd(m, 2, seed=5)
    assert torch.equal(torch.rand(3), expected)
    b = block_power_svd(m, 2, steps=2, seed=5)
    assert torch.equal(a.U, b.U) and torch.equal(a.S, b.S)
    q = random_basis(15, 4, seed=1)
    torch.testing.assert_close(q.mT @ q, torch.eye(4), atol=1e-5, rtol=0)


def test_zero_and_rank_deficient_matrices() -> None:
    out = block_power_svd(torch.zeros(6, 4), 2, steps=3)
    assert torch.all(out.S == 0) and torch.isfinite(out.U).all()
    m = torch.outer(torch.arange(1.0, 7.0), torch.ones(5, dtype=torch.float32))  # rank 1
    out = block_power_svd(m, 3, steps=5)
    assert out.S[0] == pytest.approx(float(torch.linalg.matrix_norm(m, 2)), rel=1e-5)
    assert float(out.S[1:].abs().max()) < 1e-4


def test_errors() -> None:
    with pytest.raises(RankError):
        block_power_svd(torch.ones(3, 2), 3)
    with pytest.raises(RankError):
        exact_topk_svd(torch.ones(3), 1)
    with pytest.raises(ConfigError):
        topk_svd(torch.ones(3, 3), 1, "lobpcg")
    with pytest.raises(ConfigError):
        block_power_svd(torch.ones(3, 3), 1, steps=0)
