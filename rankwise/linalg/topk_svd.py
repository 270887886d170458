"""Top-K singular triplets of a matrix `m (p, q)`.

Three paths with one result type, `TopKSVD(U (p, k), S (k,), Vh (k, q))`, singular values
non-negative and sorted descending:

- `block_power_svd`: block (subspace) power iteration with QR re-orthonormalization, followed
  by one Rayleigh-Ritz step (SVD of the small `k x k` matrix `Uᵀ m V`) that orders the triplets
  and makes `S` the best estimate the subspace allows. Warm-startable from a previous right basis
  `v0 (q, k)`; this is what SFW's spectral LMOs call every step (the reference code uses 10 steps
  for K pairs and 20 for the top pair, starting from random vectors).
- `exact_topk_svd`: `torch.linalg.svd` truncated to K (full cost, exact).
- `lowrank_topk_svd`: `torch.svd_lowrank` (randomized range finder), seeded locally.

No function touches the global RNG: random starts come from a `torch.Generator` seeded with the
`seed` argument (or from a forked RNG for `torch.svd_lowrank`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rankwise.errors import ConfigError, RankError


class TopKSVD(NamedTuple):
    """`U (p, k)` orthonormal columns, `S (k,)` descending, `Vh (k, q)` orthonormal rows."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor


def _check(m: torch.Tensor, k: int) -> None:
    if not isinstance(m, torch.Tensor) or m.dim() != 2:
        shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
        raise RankError(f"top-K SVD needs a matrix (p, q); got {shape}; flatten conv weights first")
    if not 1 <= k <= min(m.shape):
        raise RankError(
            f"top-K SVD of a {tuple(m.shape)} matrix needs 1 <= k <= {min(m.shape)}, got k={k}"
        )


def _work_dtype(m: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else (half, bfloat16, float32) runs in float32."""
    return torch.float64 if m.dtype == torch.float64 else torch.float32


def random_basis(
    q: int, k: int, *, seed: int = 0, device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Orthonormal `(q, k)` start basis from a Gaussian draw with a local generator."""
    gen = torch.Generator(device=device).manual_seed(int(seed))
    g = torch.randn(q, k, generator=gen, device=device, dtype=dtype)
    return torch.linalg.qr(g).Q


def _rayleigh_ritz(a: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> TopKSVD:
    """Best triplets of `a` within span(u) x span(v): SVD of `uᵀ a v (k, k)`."""
    b = u.mT @ a @ v
    ub, s, vbh = torch.linalg.svd(b)
    return TopKSVD(u @ ub, s, (v @ vbh.mT).mT)


def block_power_svd(
    m: torch.Tensor, k: int, steps: int = 10, *, v0: torch.Tensor | None = None, seed: int = 0
) -> TopKSVD:
    """Top-`k` singular triplets of `m (p, q)` by block power iteration with QR.

    Each step is `U = qr(m V).Q`, `V = qr(mᵀ U).Q` (two matmuls with `(q, k)`/`(p, k)` blocks
    and two thin QRs); the subspace error shrinks like `(σ_{k+1}/σ_k)^(2·steps)`. `v0 (q, k)`
    warm-starts the right basis (e.g. the previous step's `Vh.mT`); a `v0` of another shape is
    ignored. Returns float64 for float64 input, float32 otherwise, on `m`'s device.
    """
    _check(m, k)
    if steps < 1:
        raise ConfigError(f"block_power_svd needs steps >= 1, got {steps}")
    dtype = _work_dtype(m)
    a = m.detach().to(dtype)
    q = a.shape[1]
    if v0 is not None and tuple(v0.shape) == (q, k):
        v = torch.linalg.qr(v0.detach().to(device=a.device, dtype=dtype)).Q
    else:
        v = random_basis(q, k, seed=seed, device=a.device, dtype=dtype)
    u = v.new_zeros(a.shape[0], k)
    for _ in range(steps):
        u = torch.linalg.qr(a @ v).Q
        v = torch.linalg.qr(a.mT @ u).Q
    return _rayleigh_ritz(a, u, v)


def exact_topk_svd(m: torch.Tensor, k: int) -> TopKSVD:
    """Top-`k` triplets of `m (p, q)` from the full thin `torch.linalg.svd` (exact, O(p q min))."""
    _check(m, k)
    u, s, vh = torch.linalg.svd(m.detach().to(_work_dtype(m)), full_matrices=False)
    return TopKSVD(u[:, :k], s[:k], vh[:k, :])


def lowrank_topk_svd(
    m: torch.Tensor, k: int, *, niter: int = 4, oversample: int = 5, seed: int = 0
) -> TopKSVD:
    """Top-`k` triplets of `m (p, q)` by `torch.svd_lowrank` (randomized, `niter` subspace steps).

    The sketch width is `min(k + oversample, min(p, q))`; the global RNG is forked and seeded
    with `seed`, so callers' random streams are untouched.
    """
    _check(m, k)
    a = m.detach().to(_work_dtype(m))
    width = min(k + max(0, oversample), min(a.shape))
    devices = [a.device] if a.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        u, s, v = torch.svd_lowrank(a, q=width, niter=niter)
    return TopKSVD(u[:, :k], s[:k], v[:, :k].mT)


def topk_svd(
    m: torch.Tensor, k: int, method: str = "power", *, steps: int = 10,
    v0: torch.Tensor | None = None, seed: int = 0,
) -> TopKSVD:
    """Top-`k` triplets of `m (p, q)`; `method` is "power" (block power + QR, `steps`, warm start
    `v0`), "exact" (`torch.linalg.svd`) or "lowrank" (`torch.svd_lowrank`, `niter=steps`)."""
    if method == "power":
        return block_power_svd(m, k, steps, v0=v0, seed=seed)
    if method == "exact":
        return exact_topk_svd(m, k)
    if method == "lowrank":
        return lowrank_topk_svd(m, k, niter=steps, seed=seed)
    raise ConfigError(f"unknown top-K SVD method {method!r}; use 'power', 'exact' or 'lowrank'")
