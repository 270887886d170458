"""EVBMF rank estimate: threshold constant, recovery of planted ranks, invariances, errors."""

from __future__ import annotations

import math

import pytest
import torch

from rankwise.errors import RankError
from rankwise.linalg.vbmf import evbmf, evbmf_rank, tau_threshold


def _phi(z: float) -> float:
    return math.log1p(z) / z - 0.5


def _low_rank_plus_noise(p: int, q: int, r: int, sigma: float, seed: int) -> torch.Tensor:
    """Rank-r signal with singular values well above the noise edge σ(√p + √q), plus N(0, σ²)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(p, r, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(q, r, generator=g, dtype=torch.float64))
    s = torch.linspace(6.0, 3.0, r, dtype=torch.float64) * sigma * (math.sqrt(p) + math.sqrt(q))
    return (u * s) @ v.T + sigma * torch.randn(p, q, generator=g, dtype=torch.float64)


def test_tau_threshold_square_constant():
    # for L = M the condition is 2Φ(τ) = 0, i.e. log(1 + τ) = τ / 2: τ ≈ 2.5129
    t = tau_threshold(1.0)
    assert t == pytest.approx(2.5129, abs=1e-4)
    assert math.log1p(t) == pytest.approx(t / 2, abs=1e-12)


@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.7, 1.0])
def test_tau_threshold_solves_its_equation(alpha):
    t = tau_threshold(alpha)
    assert abs(_phi(t) + _phi(t / alpha)) < 1e-10
    assert math.sqrt(alpha) < t <= 2.5129 + 1e-4  # x̲ exceeds the Marchenko-Pastur edge


@pytest.mark.parametrize(
    "p, q, r, sigma",
    [(100, 80, 5, 0.1), (64, 576, 10, 0.05), (40, 200, 3, 0.3), (150, 60, 8, 1.0)],
)
def test_recovers_planted_rank_and_noise(p, q, r, sigma):
    m = _low_rank_plus_noise(p, q, r, sigma, seed=p + q)
    rank, s2 = evbmf(m)
    assert rank == r
    assert s2 == pytest.approx(sigma**2, rel=0.15)
    # the same from float32 and from the transpose
    assert evbmf(m.float())[0] == r
    assert evbmf(m.T)[0] == r


def test_pure_noise_has_rank_zero():
    m = torch.randn(80, 120, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rank, s2 = evbmf(m)
    assert rank == 0
    assert s2 == pytest.approx(1.0, rel=0.1)


def test_scale_equivariance():
    m = _low_rank_plus_noise(60, 90, 4, 0.2, seed=7)
    r1, s1 = evbmf(m)
    r2, s2 = evbmf(m * 1e-3)
    assert r1 == r2 == 4
    assert s2 == pytest.approx(s1 * 1e-6, rel=1e-4)


def test_known_noise_variance():
    m = _low_rank_plus_noise(60, 90, 4, 0.2, seed=11)
    s = torch.linalg.svdvals(m)
    assert evbmf_rank(s, (60, 90), sigma2=1e-12)[0] == 60  # every component beats tiny noise
    assert evbmf_rank(s, (60, 90), sigma2=1e6)[0] == 0
    assert evbmf_rank(s, (60, 90), sigma2=0.04) == (4, pytest.approx(0.04))


def test_degenerate_matrices():
    assert evbmf(torch.zeros(6, 4)) == (0, 0.0)
    rank, _ = evbmf(torch.ones(1, 7))  # a vector: nothing distinguishable from noise
    assert rank == 0


def test_errors():
    with pytest.raises(RankError, match="full spectrum"):
        evbmf_rank(torch.ones(3), (5, 8))
    with pytest.raises(RankError):
        evbmf(torch.ones(2, 3, 4))
    with pytest.raises(RankError):
        evbmf_rank(torch.tensor([1.0, float("inf")]), (2, 3))
    with pytest.raises(RankError):
        tau_threshold(1.5)
