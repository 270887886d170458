"""Matricizations of a conv weight `W (n, c, kh, kw)` and their inverses.

- channel (Zhang et al. 2016, TRP "NC"): `(n, c·kh·kw)`.
- spatial (Jaderberg et al. 2014, TRP "VH"): permute to `(n, kw, c, kh)`, reshape `(n·kw, c·kh)`.
- Linear weights `(out, in)` are their own matricization; a 4-D weight's "flat" matricization
  `(n, c·kh·kw)` is the channel one.
"""

from __future__ import annotations

import torch


def channel_matricize(w: torch.Tensor) -> torch.Tensor:
    """`(n, c, kh, kw) -> (n, c·kh·kw)`; a 2-D weight is returned unchanged."""
    return w.reshape(w.shape[0], -1)


def channel_unmatricize(m: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of `channel_matricize` for a weight of `shape`."""
    return m.reshape(shape)


def spatial_matricize(w: torch.Tensor) -> torch.Tensor:
    """`(n, c, kh, kw) -> (n·kw, c·kh)` via the permutation `(n, kw, c, kh)`."""
    n, c, kh, kw = w.shape
    return w.permute(0, 3, 1, 2).reshape(n * kw, c * kh)


def spatial_unmatricize(m: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of `spatial_matricize`: `(n·kw, c·kh) -> (n, c, kh, kw)`."""
    n, c, kh, kw = shape
    return m.reshape(n, kw, c, kh).permute(0, 2, 3, 1).contiguous()


MATRICIZE = {"channel": (channel_matricize, channel_unmatricize),
             "spatial": (spatial_matricize, spatial_unmatricize)}


def matricize(w: torch.Tensor, scheme: str) -> torch.Tensor:
    """Matricize a 4-D weight by `scheme` ("channel" or "spatial"); 2-D weights pass through."""
    if w.dim() == 2:
        return w
    return MATRICIZE[scheme][0](w)


def unmatricize(m: torch.Tensor, scheme: str, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of `matricize` for a weight of `shape`."""
    if len(shape) == 2:
        return m.reshape(shape)
    return MATRICIZE[scheme][1](m, shape)
