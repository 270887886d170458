"""Tensor-train (TT) decomposition by sequential truncated SVDs (Oseledets 2011, TT-SVD).

A d-way tensor `T (I_1, ..., I_d)` is written as a chain of cores `G_k (r_{k-1}, I_k, r_k)` with
`r_0 = r_d = 1`: `T[i_1, ..., i_d] = G_1[:, i_1, :] G_2[:, i_2, :] ⋯ G_d[:, i_d, :]`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rankwise.linalg.svd import thin_svd


def tt_max_ranks(shape: Sequence[int]) -> tuple[int, ...]:
    """Largest useful internal TT ranks of a tensor of `shape`:
    `r_k = min(Π_{j≤k} I_j, Π_{j>k} I_j)` for `k = 1..d−1` (the sizes of unfolding k)."""
    out = []
    for k in range(1, len(shape)):
        left = 1
        for s in shape[:k]:
            left *= int(s)
        right = 1
        for s in shape[k:]:
            right *= int(s)
        out.append(min(left, right))
    return tuple(out)


def tt_unfolding_spectra(t: torch.Tensor) -> list[torch.Tensor]:
    """Singular values (descending) of unfolding k, `(Π_{j≤k} I_j, Π_{j>k} I_j)`, of `t`, for
    `k = 1..d−1`; entry k has length `tt_max_ranks(t.shape)[k-1]`."""
    out = []
    for k in range(1, t.dim()):
        left = 1
        for s in t.shape[:k]:
            left *= s
        out.append(torch.linalg.svdvals(t.reshape(left, -1)))
    return out


def tt_svd(t: torch.Tensor, max_ranks: Sequence[int]) -> list[torch.Tensor]:
    """TT-SVD of `t (I_1, ..., I_d)`, d ≥ 2, with internal ranks `max_ranks (d−1 ints ≥ 1)`.

    Returns cores `G_k (r_{k-1}, I_k, r_k)` with exactly `r_k = max_ranks[k-1]` (when the
    sequential SVD has fewer singular vectors than asked, the extra slices are zero, so the shapes
    are always as requested). Computed in the dtype of `t`. At ranks ≥ `tt_max_ranks` it is exact;
    otherwise `‖T − T̂‖_F ≤ sqrt(Σ_k ε_k²)`, ε_k = best rank-r_k error of unfolding k.
    """
    d = t.dim()
    if d < 2:
        raise ValueError(f"tt_svd needs a tensor with ≥ 2 modes, got shape {tuple(t.shape)}")
    ranks = [int(r) for r in max_ranks]
    if len(ranks) != d - 1 or min(ranks) < 1:
        raise ValueError(f"tt_svd of a {d}-way tensor needs {d - 1} ranks ≥ 1, got {ranks}")
    cores: list[torch.Tensor] = []
    rest = t.reshape(1, -1)  # (r_{k-1}, Π_{j≥k} I_j)
    r_prev = 1
    for k in range(d - 1):
        size = t.shape[k]
        m = rest.reshape(r_prev * size, -1)
        u, s, vh = thin_svd(m)
        r = ranks[k]
        keep = min(r, s.shape[0])
        core = m.new_zeros(r_prev * size, r)
        core[:, :keep] = u[:, :keep]
        nxt = m.new_zeros(r, vh.shape[1])
        nxt[:keep] = s[:keep, None] * vh[:keep]
        cores.append(core.reshape(r_prev, size, r))
        rest, r_prev = nxt, r
    cores.append(rest.reshape(r_prev, t.shape[-1], 1))
    return cores


def tt_reconstruct(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Full tensor `(I_1, ..., I_d)` from cores `G_k (r_{k-1}, I_k, r_k)` (r_0 = r_d = 1)."""
    out = cores[0].reshape(cores[0].shape[1], cores[0].shape[2])  # (I_1, r_1)
    shape = [cores[0].shape[1]]
    for g in cores[1:]:
        r, size, r_next = g.shape
        out = (out @ g.reshape(r, size * r_next)).reshape(-1, r_next)
        shape.append(size)
    return out.reshape(shape)
