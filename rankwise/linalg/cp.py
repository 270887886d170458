"""CP (CANDECOMP/PARAFAC) decomposition of a 4-way conv weight by alternating least squares.

`W (n, c, kh, kw) ≈ Σ_r a_r ∘ b_r ∘ h_r ∘ v_r`, i.e.
`W[o, i, y, x] ≈ Σ_r A[o, r] · B[i, r] · H[y, r] · V[x, r]` (Lebedev et al. 2015). The weights
λ_r of the normalised form are folded into the factors, split evenly (each factor column gets
norm λ_r^{1/4}) so that no factor dominates in low precision.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


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
    """SVD initialisation: leading left singular vectors of each unfolding, completed with seeded
    Gaussian columns where `rank` exceeds the mode size."""
    factors = []
    for mode in range(4):
        m = w.movedim(mode, 0).reshape(w.shape[mode], -1)
        u, s, _ = torch.linalg.svd(m, full_matrices=False)
        f = u[:, :rank] * s[:rank].clamp_min(1e-12).sqrt()
        if f.shape[1] < rank:
            extra = torch.randn(w.shape[mode], rank - f.shape[1], generator=generator,
                                dtype=w.dtype).to(w.device)
            f = torch.cat([f, extra * (f.norm() / f.shape[1] ** 0.5 + 1e-3)], 1)
        factors.append(f)
    return factors


_MTTKRP = ("oiyx,ir,yr,xr->or", "oiyx,or,yr,xr->ir", "oiyx,or,ir,xr->yr", "oiyx,or,ir,yr->xr")


def cp_als(
    w: torch.Tensor,
    rank: int,
    *,
    n_iter_max: int = 1000,
    tol: float = 1e-8,
    seed: int = 0,
) -> CP4:
    """Rank-`rank` CP of `w (n, c, kh, kw)` by ALS from an SVD initialisation.

    Deterministic for a given `seed` (used only when `rank` exceeds a mode size). Stops after
    `n_iter_max` sweeps, when the relative error `e = ‖W − Ŵ‖_F / ‖W‖_F` drops below 1e-13, or
    when a sweep lowers `e` by less than the fraction `tol` of its value.
    Computed in the dtype of `w` (pass float64). Returns `CP4(out (n, R), inp (c, R), kh (kh, R),
    kw (kw, R))` with the weights folded evenly into the four factors.
    """
    if w.dim() != 4:
        raise ValueError(f"cp_als expects a 4-D weight (n, c, kh, kw), got {tuple(w.shape)}")
    if rank < 1:
        raise ValueError(f"CP rank must be ≥ 1, got {rank}")
    gen = torch.Generator().manual_seed(seed)
    factors = _init_factors(w, rank, gen)
    norm_sq = w.pow(2).sum()
    if norm_sq == 0:
        return CP4(*(torch.zeros_like(f) for f in factors))
    eye = torch.eye(rank, dtype=w.dtype, device=w.device)
    prev_err = float("inf")
    for _ in range(n_iter_max):
        for mode in range(4):
            others = [f for k, f in enumerate(factors) if k != mode]
            gram = (others[0].T @ others[0]) * (others[1].T @ others[1]) * (others[2].T @ others[2])
            mttkrp = torch.einsum(_MTTKRP[mode], w, *others)
            # Solve f @ gram = mttkrp; a tiny ridge keeps it defined for collinear columns.
            ridge = torch.finfo(w.dtype).eps * gram.diagonal().abs().max().clamp_min(1e-30) * eye
            factors[mode] = torch.linalg.solve(gram + ridge, mttkrp.T).T
        err = float((w - cp_reconstruct(factors)).norm() / norm_sq.sqrt())
        if err < 1e-13 or abs(prev_err - err) <= tol * err:
            break
        prev_err = err
    return _balance(factors)


def _balance(factors: list[torch.Tensor]) -> CP4:
    """Rescale columns so that every factor column has norm λ_r^{1/4}, λ_r = Π_k ‖f_k[:, r]‖."""
    norms = [f.norm(dim=0) for f in factors]
    lam = norms[0] * norms[1] * norms[2] * norms[3]
    target = lam.pow(0.25)
    out = []
    for f, nrm in zip(factors, norms, strict=True):
        scale = torch.where(nrm > 0, target / nrm.clamp_min(1e-300), torch.zeros_like(nrm))
        out.append(f * scale)
    return CP4(*out)
