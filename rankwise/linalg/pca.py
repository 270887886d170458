"""Centred PCA of a few long samples (t ≪ D) without forming the D × D covariance.

Used by subspace training (DLDR, Li et al. TPAMI 2022): the rows are flattened parameter
vectors sampled along a training trajectory, `t` ≈ 10–100 samples of `D` ≈ 10⁵–10⁷ numbers.
Two routes, both O(t²·D) time and O(t·D) memory:

- `"svd"`: thin SVD of the centred (t, D) matrix, `Xc = U Σ Vᵀ`; components = rows of `Vᵀ`.
- `"gram"`: eigen-decomposition of the t × t Gram matrix `Xc Xcᵀ = U Σ² Uᵀ`, then
  `V = Xcᵀ U Σ⁻¹` (what sklearn's PCA computes, without the D × D matrix). Squares the
  condition number, so it is computed in float64.

Both return the same subspace; each component's sign is fixed so that its entry of largest
magnitude is positive (deterministic across routes and devices).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rankwise.errors import RankError

METHODS = ("svd", "gram")


@dataclass
class PCAResult:
    """Principal directions of `t` samples of dimension `D`, `d` kept.

    - `components`: (d, D), orthonormal rows (`P Pᵀ = I`), ordered by decreasing variance.
    - `mean`: (D,), the sample mean that was subtracted.
    - `singular_values`: (d,), σ_i of the centred sample matrix.
    - `explained_variance`: (d,), σ_i² / (t − 1) (unbiased, as sklearn).
    - `explained_variance_ratio`: (d,), σ_i² / Σ_all σ_j² (fraction of the total variance).
    """

    components: torch.Tensor
    mean: torch.Tensor
    singular_values: torch.Tensor
    explained_variance: torch.Tensor
    explained_variance_ratio: torch.Tensor

    @property
    def total_ratio(self) -> float:
        """Fraction of the samples' variance captured by all `d` kept directions."""
        return float(self.explained_variance_ratio.sum())


def _fix_signs(v: torch.Tensor) -> torch.Tensor:
    """Flip rows of `v (d, D)` so that each row's entry of largest |.| is positive."""
    idx = v.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(torch.gather(v, 1, idx))
    signs[signs == 0] = 1
    return v * signs


def _centred_gram(samples: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and Gram matrix (t, t) of the centred `samples (t, D)`, both float64,
    accumulated over column chunks so that no float64 copy of the whole matrix is made."""
    t, dim = samples.shape
    mean = torch.cat([samples[:, lo:lo + chunk].detach().to(torch.float64).mean(dim=0)
                      for lo in range(0, dim, chunk)])
    gram = torch.zeros(t, t, dtype=torch.float64, device=samples.device)
    for lo in range(0, dim, chunk):
        xc = samples[:, lo:lo + chunk].detach().to(torch.float64) - mean[lo:lo + chunk]
        gram += xc @ xc.T
    return mean, gram


def pca(samples: torch.Tensor, d: int, method: str = "svd", rtol: float = 1e-6,
        chunk: int = 1 << 18) -> PCAResult:
    """Centred PCA of `samples (t, D)` to `d` orthonormal directions (see module docstring).

    `d` must not exceed the number of non-negligible directions, at most `t − 1` (centring
    removes one): a direction with σ_i ≤ `rtol`·σ_1 is arbitrary and raises RankError. The
    result is in `samples.dtype` on `samples.device`. `"svd"` works on a float64 copy of the
    centred matrix; `"gram"` streams `chunk` columns at a time (float64 only per chunk), the
    route for large D.
    """
    if samples.ndim != 2:
        raise RankError(f"pca: samples must be a (t, D) matrix, got shape {tuple(samples.shape)}")
    if method not in METHODS:
        raise RankError(f"pca: method {method!r} unknown; use one of {METHODS}")
    t, dim = samples.shape
    if not 1 <= d <= min(t - 1, dim):
        raise RankError(
            f"pca: d={d} directions requested from t={t} samples of dimension D={dim}; centred "
            f"samples span at most min(t - 1, D) = {min(t - 1, dim)}; lower d or take more "
            "samples")
    if method == "svd":
        x = samples.detach().to(torch.float64)
        mean = x.mean(dim=0)
        _, s_all, vh = torch.linalg.svd(x - mean, full_matrices=False)  # s descending
        v = vh[:d]
    else:
        mean, gram = _centred_gram(samples, chunk)
        evals, evecs = torch.linalg.eigh(gram)  # ascending, (t,), (t, t)
        evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
        s_all = evals.sqrt()
        v = None
    if s_all[0] <= 0 or s_all[d - 1] <= rtol * s_all[0]:
        rank = int((s_all > rtol * s_all[0]).sum()) if s_all[0] > 0 else 0
        raise RankError(
            f"pca: the {t} samples span only {rank} direction(s) after centring (σ_{d} = "
            f"{float(s_all[d - 1]):.3g}, σ_1 = {float(s_all[0]):.3g}); cannot return d={d} "
            "meaningful directions: lower d, or sample a longer / more varied trajectory")
    if v is None:
        coef = evecs[:, :d] / s_all[:d]  # (t, d): U Σ⁻¹, so that V = Xcᵀ U Σ⁻¹
        v = torch.empty(d, dim, dtype=torch.float64, device=samples.device)
        for lo in range(0, dim, chunk):
            xc = samples[:, lo:lo + chunk].detach().to(torch.float64) - mean[lo:lo + chunk]
            v[:, lo:lo + chunk] = coef.T @ xc
        # re-orthonormalize against the rounding of the Gram route (R ≈ I up to signs)
        q, r = torch.linalg.qr(v.T)
        v = (q * torch.sign(torch.diagonal(r))).T
    v = _fix_signs(v)
    energy = s_all.square()
    total = energy.sum()
    dtype, device = samples.dtype, samples.device
    s = s_all[:d]
    return PCAResult(
        components=v.to(dtype=dtype, device=device),
        mean=mean.to(dtype=dtype, device=device),
        singular_values=s.to(dtype=dtype, device=device),
        explained_variance=(s.square() / max(t - 1, 1)).to(dtype=dtype, device=device),
        explained_variance_ratio=(s.square() / total).to(dtype=dtype, device=device),
    )


__all__ = ["METHODS", "PCAResult", "pca"]
