"""`SpatialLowRankConv2d` (format "spatial"; Jaderberg et al. 2014, TRP "VH").

Each group's weight block `W_j (n/g, c/g, kh, kw)` is permuted to `(n/g, kw, c/g, kh)`, reshaped
to `((n/g)·kw, (c/g)·kh)` (`spatial_matricize`) and cut to rank r by truncated SVD,
`W_j ≈ A_j B_j` (balanced √S scaling), i.e. `W[o, i, y, x] ≈ Σ_k V[o, k, x] H[k, i, y]`. As modules:

- `first`: kh×1 conv `c → g·r` holding `H`: stride `(sh, 1)`, padding `(ph, 0)`, dilation
  `(dh, 1)`, groups g, no bias;
- `second`: 1×kw conv `g·r → n` holding `V`: stride `(1, sw)`, padding `(0, pw)`, dilation
  `(1, dw)`, groups g, the dense bias.

Padding is separable (zeros, reflect, replicate and circular all pad each axis independently, and
`first` acts on every column on its own), so splitting it between the two convs is exact; "same" and
"valid" are passed to both convs, which reproduces PyTorch's (possibly asymmetric) "same" split.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rankwise.layers.base import DenseSpec, register_format
from rankwise.layers.shapes import ConvSpec, Pair
from rankwise.layers.two_conv import (
    TwoConvLowRank,
    conv_spec_of,
    require_conv_spec,
)
from rankwise.linalg.grouped import (
    grouped_balanced_factors,
    spatial_matricize_groups,
    spatial_unmatricize_groups,
)


def _split_padding(padding: Pair | str) -> tuple[Pair | str, Pair | str]:
    if isinstance(padding, str):  # "same" / "valid" apply per axis
        return padding, padding
    return (padding[0], 0), (0, padding[1])


def spatial_factor_specs(spec: ConvSpec, rank: int) -> tuple[ConvSpec, ConvSpec]:
    """The two sub-convs at per-group `rank`: (kh×1 `c → g·r`, 1×kw `g·r → n`)."""
    g = spec.groups
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    pad_first, pad_second = _split_padding(spec.padding)
    first = ConvSpec(
        in_channels=spec.in_channels, out_channels=g * rank, kernel_size=(kh, 1),
        stride=(sh, 1), padding=pad_first, dilation=(dh, 1), groups=g, bias=False,
        padding_mode=spec.padding_mode,
    )
    second = ConvSpec(
        in_channels=g * rank, out_channels=spec.out_channels, kernel_size=(1, kw),
        stride=(1, sw), padding=pad_second, dilation=(1, dw), groups=g, bias=spec.bias,
        padding_mode=spec.padding_mode,
    )
    return first, second


@register_format
class SpatialLowRankConv2d(TwoConvLowRank):
    """`y = second(first(x))`: kh×1 conv `c → g·r`, then 1×kw conv `g·r → n` (bias).

    Input `(B, c, H, W)`, output `(B, n, H', W')` as for the dense conv. `rank` is per group.
    Params `r·c·kh + n·r·kw (+ n bias)`; with stride 1 and "same" padding MACs
    `H·W·(r·c·kh + n·r·kw)` (in general the intermediate map is strided in H only).
    """

    format = "spatial"

    @classmethod
    def factor_specs(cls, spec: ConvSpec, rank: int) -> tuple[ConvSpec, ConvSpec]:
        return spatial_factor_specs(spec, rank)

    @classmethod
    def per_pixel_macs(cls, spec: ConvSpec, rank: int) -> int:
        kh, kw = spec.kernel_size
        return rank * spec.in_channels * kh + spec.out_channels * rank * kw

    # ----- construction -------------------------------------------------------------------
    matricize_groups = staticmethod(spatial_matricize_groups)  # per group `((n/g)·kw, (c/g)·kh)`

    @classmethod
    def from_dense(
        cls, layer: nn.Module, rank: Any, *, name: str | None = None
    ) -> SpatialLowRankConv2d:
        """Per-group truncated SVD of the spatial matricization; same dtype/device as the weight."""
        spec = conv_spec_of(layer, cls.format, name)
        w = layer.weight.detach()
        out = cls(spec, rank, name=name, device=w.device, dtype=w.dtype)
        r, g = out._rank, spec.groups
        n, kw = spec.out_channels, spec.kernel_size[1]
        a, b = grouped_balanced_factors(spatial_matricize_groups(w, g), r)
        # a: (g, (n/g)·kw, r), rows (o, x) -> V (n, r, 1, kw)
        # b: (g, r, (c/g)·kh), columns (i, y) -> H (g·r, c/g, kh, 1)
        v = a.reshape(g, n // g, kw, r).permute(0, 1, 3, 2).reshape(n, r, 1, kw)
        with torch.no_grad():
            out.second.weight.copy_(v)
            out.first.weight.copy_(b.reshape(out.first.weight.shape))
            if spec.bias:
                out.second.bias.copy_(layer.bias.detach())
        return out

    # ----- rank bookkeeping ---------------------------------------------------------------
    @classmethod
    def max_rank(cls, spec: DenseSpec) -> tuple[int, ...]:
        """`(min((n/g)·kw, (c/g)·kh),)` — per group."""
        spec = require_conv_spec(spec, cls.format, None)
        g = spec.groups
        kh, kw = spec.kernel_size
        return (min(spec.out_channels // g * kw, spec.in_channels // g * kh),)

    def dense_weight(self) -> torch.Tensor:
        """`A_j B_j` per group, un-matricized, shape `(n, c/g, kh, kw)`."""
        s, g, r = self.dense_spec, self.dense_spec.groups, self._rank
        n, (kh, kw) = s.out_channels, s.kernel_size
        a = self.second.weight.reshape(g, n // g, r, kw).permute(0, 1, 3, 2)
        a = a.reshape(g, n // g * kw, r)
        b = self.first.weight.reshape(g, r, -1)
        return spatial_unmatricize_groups(a @ b, (n, s.in_channels // g, kh, kw))
