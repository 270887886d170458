"""Matricizations of a conv weight `W (n, c, kh, kw)` (the grouped, batched forms the layers use
are in `linalg.grouped`).

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


def spatial_matricize(w: torch.Tensor) -> torch.Tensor:
    """`(n, c, kh, kw) -> (n·kw, c·kh)` via the permutation `(n, kw, c, kh)`."""
    n, c, kh, kw = w.shape
    return w.permute(0, 3, 1, 2).reshape(n * kw, c * kh)


def spatial_unmatricize(m: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of `spatial_matricize`: `(n·kw, c·kh) -> (n, c, kh, kw)`."""
    n, c, kh, kw = shape
    return m.reshape(n, kw, c, kh).permute(0, 2, 3, 1).contiguous()
