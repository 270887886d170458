"""CP (CANDECOMP/PARAFAC) decomposition of a 4-way conv weight by alternating least squares.

`W (n, c, kh, kw) ≈ Σ_r a_r ∘ b_r ∘ h_r ∘ v_r`, i.e.
`W[o, i, y, x] ≈ Σ_r A[o, r] · B[i, r] · H[y, r] · V[x, r]` (Lebedev et al. 2015). The weights
λ_r of the normalised form are folded into the factors, split evenly (each factor column gets
norm λ_r^{1/4}) so that no factor dominates in low precision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

Progress = Callable[[int, float], None]
"""`callback(sweep, rel_error)` called after every ALS sweep (1-based)."""


class CP4(NamedTuple):
    """Factors of a rank-R CP decomposition of a 4-way tensor (weights folded in)."""

    out: torch.Tensor  # (n, R)
    inp: torch.Tensor  # (c, R)
    kh: torch.Tensor  # (kh, R)
    kw: torch.Tensor  # (kw, R)


def cp_reconstruct(factors: CP4 | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """`Σ_r a_r ∘ b_r ∘ h_r ∘ v_r` from factors `(n, R), (c, R), (kh, R), (kw, R)`:
    `(n, c, kh, kw)`."""
    a, b, h, v = factors
    return torch.einsum("or,ir,yr,xr->oiyx", a, b, h, v)


def _init_factors(w: torch.Tensor, rank: int, generator: torch.Generator) -> list[torch.Tensor]:
    """SVD initialisation of a batch `w (b, n, c, kh, kw)`: leading left singular vectors of each
    unfolding `(b, d, ·)`, completed with seeded Gaussian columns where `rank` exceeds the mode
    size. Returns 4 factors `(b, d_mode, rank)`."""
    b = w.shape[0]
    factors = []
    for mode in range(4):
        d = w.shape[mode + 1]
        m = w.movedim(mode + 1, 1).reshape(b, d, -1)
        u, s, _ = torch.linalg.svd(m, full_matrices=False)
        f = u[..., :rank] * s[:, None, :rank].clamp_min(1e-12).sqrt()
        k = f.shape[-1]
        if k < rank:
            extra = torch.randn(b, d, rank - k, generator=generator, dtype=w.dtype).to(w.device)
            scale = f.flatten(1).norm(dim=1) / k ** 0.5 + 1e-3
            f = torch.cat([f, extra * scale[:, None, None]], -1)
        factors.append(f)
    return factors


_MTTKRP = ("boiyx,bir,byr,bxr->bor", "boiyx,bor,byr,bxr->bir", "boiyx,bor,bir,bxr->byr",
           "boiyx,bor,bir,byr->bxr")


def cp_als(
    w: torch.Tensor,
    rank: int,
    *,
    n_iter_max: int = 1000,
    tol: float = 1e-8,
    seed: int = 0,
    callback: Progress | None = None,
) -> CP4:
    """Rank-`rank` CP of `w (n, c, kh, kw)` by ALS from an SVD initialisation.

    Deterministic for a given `seed` (used only when `rank` exceeds a mode size). Stops after
    `n_iter_max` sweeps, when the relative error `e = ‖W − Ŵ‖_F / ‖W‖_F` drops below 1e-13, or
    when a sweep lowers `e` by less than the fraction `tol` of its value. `callback(sweep, e)`,
    if given, is called after each sweep (progress for large layers).
    Computed in the dtype of `w` (pass float64). Returns `CP4(out (n, R), inp (c, R), kh (kh, R),
    kw (kw, R))` with the weights folded evenly into the four factors.
    """
    if w.dim() != 4:
        raise ValueError(f"cp_als expects a 4-D weight (n, c, kh, kw), got {tuple(w.shape)}")
    return CP4(*(f[0] for f in cp_als_batch(w[None], rank, n_iter_max=n_iter_max, tol=tol,
                                            seed=seed, callback=callback)))


def cp_als_batch(
    w: torch.Tensor,
    rank: int,
    *,
    n_iter_max: int = 1000,
    tol: float = 1e-8,
    seed: int = 0,
    callback: Progress | None = None,
) -> CP4:
    """`cp_als` of every tensor of a batch `w (b, n, c, kh, kw)` at once (e.g. the groups of a
    grouped conv): factors `(b, d, R)`. A tensor that meets the stopping rule of `cp_als` is
    frozen (same result as fitting it alone); the sweeps end when all are. `callback(sweep, e)`
    gets the largest relative error of the batch."""
    if w.dim() != 5:
        raise ValueError(f"cp_als_batch expects (b, n, c, kh, kw), got {tuple(w.shape)}")
    if rank < 1:
        raise ValueError(f"CP rank must be ≥ 1, got {rank}")
    if n_iter_max < 1:
        raise ValueError(f"n_iter_max must be ≥ 1, got {n_iter_max}")
    gen = torch.Generator().manual_seed(seed)
    factors = _init_factors(w, rank, gen)
    norm = w.flatten(1).norm(dim=1)  # (b,)
    zero = norm == 0
    if bool(zero.all()):
        return CP4(*(torch.zeros_like(f) for f in factors))
    eye = torch.eye(rank, dtype=w.dtype, device=w.device)
    prev_err = torch.full_like(norm, float("inf"))
    active = ~zero  # a tensor that met its stopping rule is frozen, as if fitted alone
    for sweep in range(1, n_iter_max + 1):
        keep = active[:, None, None]
        for mode in range(4):
            others = [f for k, f in enumerate(factors) if k != mode]
            gram = eye.new_ones(1)
            for f in others:
                gram = gram * (f.transpose(-2, -1) @ f)
            mttkrp = torch.einsum(_MTTKRP[mode], w, *others)
            # Solve f @ gram = mttkrp; a tiny ridge keeps it defined for collinear columns.
            top = gram.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1e-30)
            ridge = torch.finfo(w.dtype).eps * top[:, None, None] * eye
            new = torch.linalg.solve(gram + ridge, mttkrp.transpose(-2, -1)).transpose(-2, -1)
            factors[mode] = torch.where(keep, new, factors[mode])
        rec = torch.einsum("bor,bir,byr,bxr->boiyx", *factors)
        err = torch.where(zero, torch.zeros_like(norm),
                          (w - rec).flatten(1).norm(dim=1) / norm.clamp_min(1e-300))
        if callback is not None:
            callback(sweep, float(err.max()))
        done = (err < 1e-13) | ((prev_err - err).abs() <= tol * err)
        active = active & ~done
        if not bool(active.any()):
            break
        prev_err = torch.where(active, err, prev_err)
    factors = [torch.where(zero[:, None, None], torch.zeros_like(f), f) for f in factors]
    return _balance(factors)


def _balance(factors: list[torch.Tensor]) -> CP4:
    """Rescale columns so that every factor column has norm λ_r^{1/4}, λ_r = Π_k ‖f_k[:, r]‖
    (factors `(d, R)` or batched `(b, d, R)`)."""
    norms = [f.norm(dim=-2) for f in factors]
    lam = norms[0] * norms[1] * norms[2] * norms[3]
    target = lam.pow(0.25)
    out = []
    for f, nrm in zip(factors, norms, strict=True):
        scale = torch.where(nrm > 0, target / nrm.clamp_min(1e-300), torch.zeros_like(nrm))
        out.append(f * scale.unsqueeze(-2))
    return CP4(*out)


def _mode_basis(w: torch.Tensor, mode: int, rtol: float) -> torch.Tensor:
    """Orthonormal basis `(d_mode, r)` of the mode-`mode` fibres of `w`: left singular vectors
    of the unfolding with `σ > rtol · σ_max` (at least one column)."""
    m = w.movedim(mode, 0).reshape(w.shape[mode], -1)
    u, s, _ = torch.linalg.svd(m, full_matrices=False)
    keep = max(1, int((s > rtol * s[0]).sum())) if float(s[0]) > 0 else 1
    return u[:, :keep]


def cp_exact(w: torch.Tensor, rtol: float = 1e-7) -> CP4:
    """An exact CP of `w (n, c, kh, kw)` built from its HOSVD, no iterations.

    With multilinear ranks `r_k` (σ > `rtol`·σ_max of each unfolding), `W = G ×_k U_k` and, for
    the mode `m` of largest `r_m`, `W = Σ_{fibres f of G along m} (⊗_{k≠m} U_k e_{i_k}) ∘ U_m f`:
    a CP of rank ≤ `Π_{k≠m} r_k` (the classical bound, Kolda & Bader 2009, Sec. 3.1), exact up to
    the dropped singular values. Zero fibres are dropped. Returns balanced `CP4` factors.
    """
    if w.dim() != 4:
        raise ValueError(f"cp_exact expects a 4-D weight (n, c, kh, kw), got {tuple(w.shape)}")
    bases = [_mode_basis(w, k, rtol) for k in range(4)]
    core = torch.einsum("oiyx,oa,ib,yc,xd->abcd", w, *bases)
    m = max(range(4), key=lambda k: bases[k].shape[1])
    others = [k for k in range(4) if k != m]
    fibres = core.movedim(m, -1).reshape(-1, core.shape[m])  # (Π_{k≠m} r_k, r_m)
    idx = torch.cartesian_prod(*[torch.arange(core.shape[k]) for k in others]).reshape(
        -1, len(others))
    keep = fibres.norm(dim=1) > 0
    if not bool(keep.any()):
        keep[0] = True
    fibres, idx = fibres[keep], idx[keep]
    factors: list[torch.Tensor] = [torch.empty(0)] * 4
    for j, k in enumerate(others):
        factors[k] = bases[k][:, idx[:, j]]
    factors[m] = bases[m] @ fibres.T
    return _balance(factors)


def cp_exact_rank(w: torch.Tensor, rtol: float = 1e-7) -> int:
    """The rank `cp_exact(w, rtol)` returns (an upper bound on the CP rank of `w`)."""
    return int(cp_exact(w, rtol).out.shape[1])
