"""Per-group matricizations and factorizations of grouped conv weights.

A conv with `groups = g` has a weight `W (n, c/g, kh, kw)` whose output channels
`[j·n/g, (j+1)·n/g)` only see input channels `[j·c/g, (j+1)·c/g)`. Each group's block
`W_j (n/g, c/g, kh, kw)` is matricized and factorized on its own; these helpers batch that over a
leading group dimension, so `(g, p, q)` stacks below are "one matrix per group". With `g = 1` they
reduce to the plain matricizations of `rankwise.linalg.matricize`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rankwise.errors import ConfigError
from rankwise.linalg.svd import balanced_factors, svdvals

SCHEMES = ("channel", "spatial", "nd")


def svd_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype the SVD is computed in: float64 stays float64, everything else uses float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def split_groups(w: torch.Tensor, groups: int) -> torch.Tensor:
    """`W (n, c/g, kh, kw) -> (g, n/g, c/g, kh, kw)`: the per-group blocks, stacked."""
    n = w.shape[0]
    if groups < 1 or n % groups:
        raise ValueError(f"{n} output channels cannot be split into {groups} groups")
    return w.reshape(groups, n // groups, *w.shape[1:])


def channel_matricize_groups(w: torch.Tensor, groups: int) -> torch.Tensor:
    """`W (n, c/g, kh, kw) -> (g, n/g, (c/g)·kh·kw)`: each group's channel matricization."""
    blocks = split_groups(w, groups)
    return blocks.reshape(groups, blocks.shape[1], -1)


def channel_unmatricize_groups(
    m: torch.Tensor, shape: torch.Size | tuple[int, ...]
) -> torch.Tensor:
    """Inverse of `channel_matricize_groups`: `(g, n/g, (c/g)·kh·kw) -> shape (n, c/g, kh, kw)`."""
    return m.reshape(tuple(shape))


def spatial_matricize_groups(w: torch.Tensor, groups: int) -> torch.Tensor:
    """`W (n, c/g, kh, kw) -> (g, (n/g)·kw, (c/g)·kh)`: each group's spatial matricization.

    Per group this is `spatial_matricize` (permute to `(n/g, kw, c/g, kh)`, then reshape).
    """
    blocks = split_groups(w, groups)  # (g, n/g, c/g, kh, kw)
    g, ng, cg, kh, kw = blocks.shape
    return blocks.permute(0, 1, 4, 2, 3).reshape(g, ng * kw, cg * kh)


def spatial_unmatricize_groups(
    m: torch.Tensor, shape: torch.Size | tuple[int, ...]
) -> torch.Tensor:
    """Inverse of `spatial_matricize_groups`: `(g, (n/g)·kw, (c/g)·kh) -> (n, c/g, kh, kw)`."""
    n, cg, kh, kw = shape
    g = m.shape[0]
    blocks = m.reshape(g, n // g, kw, cg, kh).permute(0, 1, 3, 4, 2)
    return blocks.reshape(n, cg, kh, kw).contiguous()


def matricize_groups(w: torch.Tensor, scheme: str = "channel", groups: int = 1) -> torch.Tensor:
    """The one matricization dispatch: `(B, p, q)` matrices of a weight by `scheme`.

    conv `W (n, c/g, kh, kw)`: "channel" (TRP's NC) `(g, n/g, (c/g)·kh·kw)`, "spatial" (VH)
    `(g, (n/g)·kw, (c/g)·kh)`, "nd" (network decoupling) one `(c/g, kh·kw)` per output filter
    (B = n); a linear `(out, in)` weight is one matrix `(1, out, in)` whatever the scheme.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown matricization scheme {scheme!r}; choose one of {SCHEMES}")
    if w.dim() == 2:
        return w.unsqueeze(0)
    if w.dim() != 4:
        raise ConfigError(f"expected a 2-D or 4-D weight, got shape {tuple(w.shape)}")
    if scheme == "nd":
        return w.reshape(w.shape[0], w.shape[1], -1)
    if scheme == "spatial":
        return spatial_matricize_groups(w, groups)
    return channel_matricize_groups(w, groups)


def unmatricize_groups(m: torch.Tensor, scheme: str, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of `matricize_groups`: `(B, p, q)` → a weight of `shape`."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2 or scheme == "nd":
        return m.reshape(shape)
    if scheme == "spatial":
        return spatial_unmatricize_groups(m, shape)
    return channel_unmatricize_groups(m, shape)


def grouped_balanced_factors(m: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-`rank` factors of every group: `m (g, p, q) ≈ A (g, p, r) @ B (g, r, q)`.

    Balanced scaling (`A = U√S`, `B = √S Vᵀ`). The SVD runs in `svd_dtype(m.dtype)`; the factors
    are returned in `m`'s dtype and device.
    """
    a, b = balanced_factors(m.to(svd_dtype(m.dtype)), rank)
    return a.to(m.dtype), b.to(m.dtype)


def pooled_singular_values(m: torch.Tensor) -> torch.Tensor:
    """Per-index root-sum-square of the groups' singular values: `(g, p, q) -> (min(p, q),)`.

    `s_i = sqrt(Σ_j σ_{j,i}²)` where `σ_{j,·}` are group j's singular values (descending). The
    result is descending, has one entry per per-group rank, and keeping rank r in every group
    leaves a Frobenius error of exactly `sqrt(Σ_{i>r} s_i²)`, so energy-based rank policies read it
    like an ordinary spectrum. With one group it is the plain singular values. Float64 for float64
    input, else float32.
    """
    s = svdvals(m.to(svd_dtype(m.dtype)))  # (g, min(p, q))
    return s.square().sum(dim=0).sqrt()
