"""`DecoupledConv2d` (format "nd"): network decoupling (Guo et al. 2018; TRP's "ND" scheme).

Every output filter `W[i] (c/g, kh, kw)` is matricized on its own to `M_i = W[i].view(c/g,
kh·kw)` and cut to rank r by truncated SVD, `M_i ≈ Σ_{k<r} u_ik v_ikᵀ` (balanced √σ scaling).
Because a spatial kernel commutes with channel mixing,
`y_i = Σ_k v_ik ⋆ (Σ_c u_ik[c] x_c)`, i.e. r parallel paths "1×1 conv, then depthwise kh×kw":

- `first`: 1×1 conv `c → n·r` (groups g, stride 1, no bias); output channel `i·r + k` holds
  `u_ik`;
- `second`: kh×kw conv `n·r → n` with groups n (filter i sums its r paths), carrying the dense
  conv's stride, padding (any mode), dilation and bias; its kernel `[i, k]` is `v_ik`.

The rank r is shared by all filters (TRP's code uses the max over filters). At `r = max_rank =
min(c/g, kh·kw)` the layer equals the dense conv exactly. Params `n·r·(c/g + kh·kw)`;
MACs `n·r·(c/g)·H·W + n·r·kh·kw·H'·W'` (the 1×1 paths run at the input resolution); the
reference's per-output-pixel count is `(n·c + n·kh·kw)·r`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rankwise.layers.base import DenseSpec, register_format
from rankwise.layers.shapes import ConvSpec
from rankwise.layers.two_conv import (
    TwoConvLowRank,
    check_conv_weight,
    conv_spec_of,
    require_conv_spec,
)
from rankwise.linalg.grouped import grouped_balanced_factors, pooled_singular_values


def filter_matricize(weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """`W (n, c/g, kh, kw) -> (n, c/g, kh·kw)`: one matrix per output filter (`groups` unused:
    each filter already sees only its group's channels)."""
    return weight.reshape(weight.shape[0], weight.shape[1], -1)


def decoupled_factor_specs(spec: ConvSpec, rank: int) -> tuple[ConvSpec, ConvSpec]:
    """(1×1 conv `c → n·r`, groups g; kh×kw conv `n·r → n`, groups n, stride/padding/bias)."""
    n = spec.out_channels
    first = ConvSpec(in_channels=spec.in_channels, out_channels=n * rank, kernel_size=(1, 1),
                     groups=spec.groups, bias=False)
    second = ConvSpec(in_channels=n * rank, out_channels=n, kernel_size=spec.kernel_size,
                      stride=spec.stride, padding=spec.padding, dilation=spec.dilation,
                      groups=n, bias=spec.bias, padding_mode=spec.padding_mode)
    return first, second


@register_format
class DecoupledConv2d(TwoConvLowRank):
    """`y = second(first(x))`: 1×1 conv `c → n·r`, then grouped kh×kw conv `n·r → n`.

    Input `(B, c, H, W)`, output `(B, n, H', W')` as for the dense conv. `rank` is per filter.
    """

    format = "nd"

    @classmethod
    def factor_specs(cls, spec: ConvSpec, rank: int) -> tuple[ConvSpec, ConvSpec]:
        return decoupled_factor_specs(spec, rank)

    @classmethod
    def per_pixel_macs(cls, spec: ConvSpec, rank: int) -> int:
        """TRP's ND count per output pixel: `(n·c/g + n·kh·kw)·r`."""
        kh, kw = spec.kernel_size
        n = spec.out_channels
        return (n * (spec.in_channels // spec.groups) + n * kh * kw) * rank

    matricize_groups = staticmethod(filter_matricize)

    @classmethod
    def max_rank(cls, spec: DenseSpec) -> tuple[int, ...]:
        """`(min(c/g, kh·kw),)` — per filter."""
        spec = require_conv_spec(spec, cls.format, None)
        kh, kw = spec.kernel_size
        return (min(spec.in_channels // spec.groups, kh * kw),)

    @classmethod
    def spectra(cls, weight: torch.Tensor, spec: DenseSpec) -> list[torch.Tensor]:
        """`[s]`, `s_k = sqrt(Σ_i σ_ik²)` over the filters' spectra: keeping rank r in every
        filter leaves the Frobenius error `sqrt(Σ_{k>r} s_k²)`."""
        spec = require_conv_spec(spec, cls.format, None)
        check_conv_weight(weight, spec)
        return [pooled_singular_values(filter_matricize(weight.detach()))]

    @classmethod
    def from_dense(cls, layer: nn.Module, rank: Any, *,
                   name: str | None = None) -> DecoupledConv2d:
        """Per-filter truncated SVD; same dtype/device as the weight."""
        spec = conv_spec_of(layer, cls.format, name)
        w = layer.weight.detach()
        out = cls(spec, rank, name=name, device=w.device, dtype=w.dtype)
        r, n = out._rank, spec.out_channels
        a, b = grouped_balanced_factors(filter_matricize(w), r)  # (n, c/g, r), (n, r, kh·kw)
        with torch.no_grad():
            out.first.weight.copy_(a.transpose(1, 2).reshape(n * r, -1, 1, 1))
            out.second.weight.copy_(b.reshape(n, r, *spec.kernel_size))
            if spec.bias:
                out.second.bias.copy_(layer.bias.detach())
        return out

    def dense_weight(self) -> torch.Tensor:
        """`Σ_k u_ik v_ikᵀ` per filter, shape `(n, c/g, kh, kw)`."""
        s, r = self.dense_spec, self._rank
        n = s.out_channels
        u = self.first.weight.reshape(n, r, -1)  # (n, r, c/g)
        v = self.second.weight.reshape(n, r, -1)  # (n, r, kh·kw)
        return torch.einsum("nrc,nrk->nck", u, v).reshape(n, -1, *s.kernel_size)


__all__ = ["DecoupledConv2d", "decoupled_factor_specs", "filter_matricize"]
