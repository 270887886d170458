"""Analytic empirical variational Bayesian matrix factorization (EVBMF) rank estimate.

Nakajima, Sugiyama, Babacan & Tomioka, "Global analytic solution of fully-observed variational
Bayesian matrix factorization", JMLR 14 (2013), with the noise-variance estimator of Nakajima,
Tomioka, Sugiyama & Babacan, "Condition for perfect dimensionality recovery by variational
Bayesian PCA", JMLR 16 (2015). Used (Kim et al. 2016) to pick Tucker ranks of pre-trained convs.

Model: `V = B Aᵀ + E`, `V (L, M)` with `L ≤ M` (transpose otherwise), `α = L / M`, Gaussian noise
of unknown variance σ², ARD priors learned from the data. Only the singular values `γ_1 ≥ … ≥ γ_L`
and the shape matter. With `x = γ² / (M σ²)`:

- `τ(x) = ½ (x − (1 + α) + √((x − (1 + α))² − 4α))` for `x ≥ (1 + √α)²`;
- `τ̲` is the unique zero of `Φ(τ) + Φ(τ / α)`, `Φ(z) = log(1 + z) / z − ½`
  (`τ̲ = 2.5129…` for square matrices; peers' code uses the approximation `2.5129 √α`, we solve it);
- component h is kept iff `x_h > x̲ = (1 + τ̲)(1 + α / τ̲)`, i.e. `γ_h > √(M σ² x̲)`;
- σ̂² minimizes the free energy `Ω(σ²) = Σ_h ψ₀(x_h) + Σ_{x_h > x̲} ψ₁(x_h)` with
  `ψ₀(x) = x − log x`, `ψ₁(x) = log(τ + 1) + α log(τ / α + 1) − τ` (`ψ₁(x̲) = 0`, so Ω is
  continuous), over `[σ̲², σ̄²]`: `σ̄² = Σ γ_h² / (L M)`,
  `σ̲² = max(γ²_{H̄+1} / (M x̲), Σ_{h>H̄} γ_h² / (M (L − H̄)))`, `H̄ = ⌈L / (1 + α)⌉ − 1`.
  Ω is not convex: we evaluate it on a log-spaced grid and refine the best cell by golden section.
"""

from __future__ import annotations

import math

import torch

from rankwise.errors import RankError
from rankwise.linalg.spectra import singular_values

_PHI_ZERO = 2.512862417252339  # root of log(1 + z) / z = 1/2
_GRID = 512
_GOLDEN_ITERS = 80


def _phi(z: float) -> float:
    return math.log1p(z) / z - 0.5


def tau_threshold(alpha: float) -> float:
    """`τ̲(α)`: the zero of `Φ(τ) + Φ(τ/α)` for `α = L/M ∈ (0, 1]`, found by bisection.

    It lies in `[α · 2.5129, 2.5129]` (Φ is decreasing with its zero at 2.5129).
    """
    if not 0.0 < alpha <= 1.0:
        raise RankError(f"alpha = L/M must be in (0, 1], got {alpha}")
    lo, hi = alpha * _PHI_ZERO, _PHI_ZERO
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _phi(mid) + _phi(mid / alpha) > 0.0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return 0.5 * (lo + hi)


def _tau(x: torch.Tensor, alpha: float) -> torch.Tensor:
    b = x - (1.0 + alpha)
    return 0.5 * (b + torch.sqrt((b * b - 4.0 * alpha).clamp(min=0.0)))


def _free_energy(
    sigma2: torch.Tensor, g2: torch.Tensor, m: int, alpha: float, x_bar: float
) -> torch.Tensor:
    """Ω(σ²) up to σ²-independent constants; `sigma2 (G,)`, `g2 (L,)` -> `(G,)`.

    `ψ₀(x) = x − log x` is written `γ²/(Mσ²) + log σ² − log(γ²/M)`, dropping the constant last
    term so that zero singular values need no `log 0`.
    """
    x = g2.unsqueeze(0) / (m * sigma2.unsqueeze(1))  # (G, L)
    omega = x.sum(1) + g2.numel() * torch.log(sigma2)
    keep = x > x_bar
    tau = _tau(torch.where(keep, x, torch.full_like(x, x_bar)), alpha)
    psi1 = torch.log1p(tau) + alpha * torch.log1p(tau / alpha) - tau
    return omega + torch.where(keep, psi1, torch.zeros_like(psi1)).sum(1)


def _minimize(f, lo: float, hi: float) -> float:
    """Global-ish minimizer of a 1-D function on `[lo, hi]` (log grid + golden section)."""
    if hi <= lo * (1.0 + 1e-12):
        return hi
    grid = torch.logspace(math.log10(lo), math.log10(hi), _GRID, dtype=torch.float64)
    values = f(grid)
    i = int(torch.argmin(values))
    a = math.log(float(grid[max(i - 1, 0)]))
    b = math.log(float(grid[min(i + 1, _GRID - 1)]))
    best_t, best_v = math.log(float(grid[i])), float(values[i])
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc = float(f(torch.tensor([math.exp(c)], dtype=torch.float64))[0])
    fd = float(f(torch.tensor([math.exp(d)], dtype=torch.float64))[0])
    for _ in range(_GOLDEN_ITERS):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = float(f(torch.tensor([math.exp(c)], dtype=torch.float64))[0])
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = float(f(torch.tensor([math.exp(d)], dtype=torch.float64))[0])
    for t, v in ((c, fc), (d, fd)):
        if v < best_v:
            best_t, best_v = t, v
    return math.exp(best_t)


def evbmf_rank(
    s: torch.Tensor, shape: tuple[int, int], sigma2: float | None = None
) -> tuple[int, float]:
    """EVBMF rank of a `(p, q)` matrix from its full spectrum `s (min(p, q),)`.

    Returns `(rank, σ̂²)`: the number of components the EVB solution keeps (may be 0 — nothing
    is distinguishable from noise, e.g. for a vector) and the noise variance per entry, estimated
    unless `sigma2` is given. A zero matrix gives `(0, 0.0)`.
    """
    p, q = int(shape[0]), int(shape[1])
    el, m = min(p, q), max(p, q)
    if el < 1:
        raise RankError(f"EVBMF needs a non-empty matrix, got shape {shape}")
    if s.dim() != 1 or s.numel() != el:
        raise RankError(
            f"EVBMF needs the full spectrum of the {p}x{q} matrix ({el} singular values), got "
            f"{tuple(s.shape)}; pass torch.linalg.svdvals of the whole matrix"
        )
    g = torch.sort(s.detach().to("cpu", torch.float64), descending=True).values
    if not bool(torch.isfinite(g).all()) or bool((g < 0).any()):
        raise RankError("EVBMF: the spectrum must be finite and non-negative (non-finite weight?)")
    scale2 = float((g * g).mean())
    if scale2 == 0.0:
        return 0, 0.0
    g2 = g * g / scale2  # work with unit mean square for a well-scaled search
    alpha = el / m
    tau_bar = tau_threshold(alpha)
    x_bar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)
    if sigma2 is None:
        h_bar = min(math.ceil(el / (1.0 + alpha)) - 1, el - 1)
        upper = float(g2.sum()) / (el * m)
        lower = max(float(g2[h_bar]) / (m * x_bar), float(g2[h_bar:].sum()) / (m * (el - h_bar)))
        lower = min(max(lower, upper * 1e-12), upper)
        s2 = _minimize(lambda v: _free_energy(v, g2, m, alpha, x_bar), lower, upper)
    else:
        if not sigma2 > 0.0:
            raise RankError(f"EVBMF noise variance must be > 0, got {sigma2}")
        s2 = sigma2 / scale2
    threshold2 = m * s2 * x_bar
    rank = int((g2 > threshold2).sum())
    return rank, s2 * scale2


def evbmf(m: torch.Tensor, sigma2: float | None = None) -> tuple[int, float]:
    """EVBMF rank of the matrix `m (p, q)`: `(rank, σ̂²)`, see `evbmf_rank`."""
    if m.dim() != 2:
        raise RankError(f"EVBMF needs a matrix (p, q), got shape {tuple(m.shape)}")
    return evbmf_rank(singular_values(m), (m.shape[0], m.shape[1]), sigma2)
