"""Rank measures on a spectrum: a 1-D tensor `s (k,)` of singular values (non-negative).

All measures compute in float64 and are insensitive to the order of `s` (it is sorted descending
internally), so float32 spectra of large layers do not lose the tail to rounding.

Conventions (shared by every function here and by `rankwise.surgery.rank`):
- An all-zero spectrum (a zero matrix) has nothing to keep: every rank-returning function returns
  1 (the smallest usable rank), `effective_rank` and `stable_rank` return 1.0, and
  `energy_curve` is all ones (no energy can be lost).
- "Numerical rank" of `s` is the number of σ_i > σ_max · k · eps(dtype of s), the default of
  `torch.linalg.matrix_rank` with the matrix size replaced by the spectrum length (at least 1).
  `energy_rank` never goes beyond it, so `energy_rank(s, 1.0)` is the numerical rank rather than
  the full length when the tail is rounding noise.
"""

from __future__ import annotations

import math

import torch

from rankwise.errors import ConfigError, RankError
from rankwise.linalg.svd import svdvals

ENERGY_TOL = 1e-12
"""Slack on cumulative-energy comparisons (float64 rounding of the cumulative sum)."""


def _spectrum(s: torch.Tensor) -> torch.Tensor:
    """Validate `s` and return it as a descending float64 CPU tensor."""
    if not isinstance(s, torch.Tensor) or s.dim() != 1 or s.numel() == 0:
        shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise RankError(
            f"a spectrum must be a non-empty 1-D tensor of singular values, got {shape}"
        )
    s64 = s.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(s64).all()):
        raise RankError(
            "the spectrum contains NaN/Inf: the layer's weight is not finite; check training "
            "(NonFiniteLossError) or the checkpoint before selecting a rank"
        )
    if bool((s64 < 0).any()):
        raise RankError("singular values must be non-negative; pass torch.linalg.svdvals output")
    return torch.sort(s64, descending=True).values


def singular_values(m: torch.Tensor) -> torch.Tensor:
    """Singular values of `m (..., p, q)`, descending, shape `(..., min(p, q))`.

    Computed in float64 for stability (a float32 SVD loses the small tail), returned in the
    dtype and on the device of `m`.
    """
    if m.dim() < 2:
        raise RankError(f"singular_values needs a matrix (..., p, q), got shape {tuple(m.shape)}")
    s = svdvals(m.detach().to(torch.float64))
    return s.to(dtype=m.dtype if m.is_floating_point() else torch.float64)


def numerical_rank(s: torch.Tensor) -> int:
    """Count of σ_i > σ_max · len(s) · eps(s.dtype); at least 1 (see module docstring)."""
    eps = torch.finfo(s.dtype).eps if s.is_floating_point() else torch.finfo(torch.float64).eps
    s64 = _spectrum(s)
    tol = float(s64[0]) * s64.numel() * eps
    return max(1, int((s64 > tol).sum()))


def energy_curve(s: torch.Tensor) -> torch.Tensor:
    """Cumulative energy fraction `c (k,)` float64: `c[r-1] = Σ_{i≤r} σ_i² / Σ_i σ_i²`.

    `c` is non-decreasing and ends at exactly 1.0; an all-zero spectrum gives all ones.
    """
    s64 = _spectrum(s)
    top = float(s64[0])
    if top == 0.0:
        return torch.ones_like(s64)
    sq = (s64 / top) ** 2  # scaled first so that tiny (subnormal) values do not underflow
    c = torch.cumsum(sq, 0) / float(sq.sum())
    c[-1] = 1.0
    return c.clamp_(max=1.0)


def energy_rank(s: torch.Tensor, e: float) -> int:
    """Smallest r with `Σ_{i≤r} σ_i² / Σ σ_i² ≥ e` (TRP's `EnergyThreshold`, on σ²).

    `e ∈ (0, 1]`. Comparisons allow `ENERGY_TOL` of float64 slack and the result is capped at
    `numerical_rank(s)`, so `e = 1.0` returns the numerical rank. Returns 1 for a zero spectrum.
    """
    if not 0.0 < e <= 1.0:
        raise ConfigError(f"energy threshold must be in (0, 1], got {e}; e.g. energy:0.9")
    c = energy_curve(s)
    r = int(torch.searchsorted(c, torch.tensor([e - ENERGY_TOL], dtype=c.dtype))[0]) + 1
    return max(1, min(r, c.numel(), numerical_rank(s)))


def value_threshold_rank(s: torch.Tensor, t: float) -> int:
    """Number of σ_i ≥ t (absolute threshold, TRP's `ValueThreshold`); at least 1."""
    if not (t >= 0.0 and math.isfinite(t)):
        raise ConfigError(
            f"singular-value threshold must be finite and >= 0, got {t}; e.g. value:0.05"
        )
    return max(1, int((_spectrum(s) >= t).sum()))


def ratio_rank(max_rank: int, f: float) -> int:
    """`max(1, int(f · max_rank))`: keep a fraction `f ∈ (0, 1]` of the rank.

    Plain truncation, exactly as SFW's compression sweep computes `max(1, int((1 − s)·rank))` with
    `f = 1 − s` (so float rounding can give one less, e.g. `int(0.29·100) = 28`).
    """
    if max_rank < 1:
        raise RankError(f"max_rank must be >= 1, got {max_rank}")
    if not 0.0 < f <= 1.0:
        raise ConfigError(f"rank fraction must be in (0, 1], got {f}; e.g. ratio:0.25")
    return max(1, int(f * max_rank))


def effective_rank(s: torch.Tensor) -> float:
    """Effective rank (Roy & Vetterli 2007): `exp(−Σ p_i log p_i)` with `p = σ / ‖σ‖₁`.

    Uses `0 · log 0 = 0`; `1 ≤ erank ≤ count of non-zero σ`. A zero spectrum gives 1.0.
    """
    s64 = _spectrum(s)
    total = float(s64.sum())
    if total == 0.0:
        return 1.0
    p = s64[s64 > 0] / total
    return max(1.0, float(torch.exp(-(p * torch.log(p)).sum())))


def stable_rank(s: torch.Tensor) -> float:
    """Stable rank `‖σ‖₂² / σ_max² = ‖W‖_F² / ‖W‖₂²` (≥ 1); a zero spectrum gives 1.0."""
    s64 = _spectrum(s)
    top = float(s64[0])
    if top == 0.0:
        return 1.0
    return max(1.0, float(((s64 / top) ** 2).sum()))
