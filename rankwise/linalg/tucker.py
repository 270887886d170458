"""Partial Tucker-2 decomposition of a conv weight on its channel modes (Kim et al. 2016).

`W (n, c, kh, kw) ≈ G ×₁ U_out ×₂ U_in`, i.e.
`W[o, i, y, x] ≈ Σ_{a, b} U_out[o, a] · G[a, b, y, x] · U_in[i, b]`, with core
`G (r_o, r_i, kh, kw)`,
`U_out (n, r_o)` and `U_in (c, r_i)` having orthonormal columns. HOSVD takes the leading left
singular vectors of the mode-0 / mode-1 unfoldings; HOOI (higher-order orthogonal iteration)
then alternates between the two modes, which never increases the error.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Tucker2(NamedTuple):
    """Factors of a partial Tucker-2 decomposition."""

    core: torch.Tensor  # (r_o, r_i, kh, kw)
    u_out: torch.Tensor  # (n, r_o)
    u_in: torch.Tensor  # (c, r_i)


def unfold(w: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-`mode` unfolding of `w (d_0, ..., d_{k-1})`: `(d_mode, Π_{j≠mode} d_j)`."""
    return w.movedim(mode, 0).reshape(w.shape[mode], -1)


def mode_spectra(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values (descending) of the mode-0 `(n, c·kh·kw)` and mode-1 `(c, n·kh·kw)`
    unfoldings of `w (n, c, kh, kw)`; lengths `min(n, c·kh·kw)` and `min(c, n·kh·kw)`."""
    return _left_svd(unfold(w, 0))[1], _left_svd(unfold(w, 1))[1]


def _left_svd(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors `(p, min(p, q))` and singular values (descending) of `m (p, q)`.

    Unfoldings of conv weights are wide (`q = p'·kh·kw ≫ p`); for those the eigen-decomposition
    of the `p × p` Gram matrix `m mᵀ`, accumulated in float64, is several times cheaper than an
    SVD of `m`. Singular values below ~1e-8·σ_max lose relative precision that way, which does
    not matter for choosing or truncating ranks; square-ish matrices use the SVD.
    """
    p, q = m.shape
    if q >= 4 * p:
        gram = m.double() @ m.double().T
        evals, evecs = torch.linalg.eigh(gram)
        s = evals.flip(0).clamp_min(0).sqrt().to(m.dtype)
        return evecs.flip(1).to(m.dtype), s
    u, s, _ = torch.linalg.svd(m, full_matrices=False)
    return u, s


def _leading_left(m: torch.Tensor, r: int) -> torch.Tensor:
    """The `r` leading left singular vectors of `m (p, q)`: `(p, r)`."""
    return _left_svd(m)[0][:, :r]


def tucker2_core(w: torch.Tensor, u_out: torch.Tensor, u_in: torch.Tensor) -> torch.Tensor:
    """Project `w (n, c, kh, kw)` onto the factors: `G = W ×₁ U_outᵀ ×₂ U_inᵀ`,
    `(r_o, r_i, kh, kw)`."""
    return torch.einsum("ocyx,oa,cb->abyx", w, u_out, u_in)


def tucker2_reconstruct(
    core: torch.Tensor, u_out: torch.Tensor, u_in: torch.Tensor
) -> torch.Tensor:
    """`G ×₁ U_out ×₂ U_in`: core `(r_o, r_i, kh, kw)`, `U_out (n, r_o)`, `U_in (c, r_i)` →
    `(n, c, kh, kw)`."""
    return torch.einsum("abyx,oa,cb->ocyx", core, u_out, u_in)


def partial_tucker2(w: torch.Tensor, ranks: tuple[int, int], n_iter: int = 0) -> Tucker2:
    """Tucker-2 of `w (n, c, kh, kw)` on modes 0 and 1 at `ranks = (r_o, r_i)`.

    HOSVD initialisation followed by `n_iter` HOOI sweeps. Requires
    `1 ≤ r_o ≤ min(n, c·kh·kw)` and `1 ≤ r_i ≤ min(c, n·kh·kw)`. Computed in the dtype of `w`
    (pass float64 for accuracy). Returns `Tucker2(core (r_o, r_i, kh, kw), u_out (n, r_o),
    u_in (c, r_i))`; HOSVD error obeys
    `max(ε_0², ε_1²) ≤ ‖W − Ŵ‖_F² ≤ ε_0² + ε_1²` (ε_k² = discarded σ² of unfolding k).
    """
    if w.dim() != 4:
        raise ValueError(
            f"partial_tucker2 expects a 4-D weight (n, c, kh, kw), got {tuple(w.shape)}"
        )
    n, c, kh, kw = w.shape
    r_o, r_i = int(ranks[0]), int(ranks[1])
    if not (1 <= r_o <= min(n, c * kh * kw) and 1 <= r_i <= min(c, n * kh * kw)):
        raise ValueError(
            f"Tucker-2 ranks {(r_o, r_i)} out of range for weight {tuple(w.shape)}: need "
            f"1 ≤ r_o ≤ {min(n, c * kh * kw)} and 1 ≤ r_i ≤ {min(c, n * kh * kw)}"
        )
    if n_iter < 0:
        raise ValueError(f"n_iter must be ≥ 0, got {n_iter}")
    u_out = _leading_left(unfold(w, 0), r_o)
    u_in = _leading_left(unfold(w, 1), r_i)
    for _ in range(n_iter):
        # Best U_out for fixed U_in: leading left vectors of unfold_0(W ×₂ U_inᵀ) (n, r_i·kh·kw).
        u_out = _leading_left(unfold(torch.einsum("ocyx,cb->obyx", w, u_in), 0), r_o)
        u_in = _leading_left(unfold(torch.einsum("ocyx,oa->acyx", w, u_out), 1), r_i)
    return Tucker2(tucker2_core(w, u_out, u_in), u_out, u_in)
