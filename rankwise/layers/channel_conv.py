"""`ChannelLowRankConv2d` (format "channel"; Zhang et al. 2016, TRP "NC").

Each group's weight block `W_j (n/g, c/g, kh, kw)` is matricized channel-wise to
`(n/g, (c/g)·kh·kw)` and cut to rank r by truncated SVD, `W_j ≈ A_j B_j` (balanced √S scaling).
As modules:

- `first`: kh×kw conv `c → g·r` holding the `B_j`, with the dense conv's stride, padding
  (ints, tuples, "same", "valid"), dilation, padding_mode and groups, no bias;
- `second`: 1×1 conv `g·r → n`, groups g, holding the `A_j` and the dense bias.

The rank is per group; at `r = max_rank` the layer equals the dense conv exactly. 1×1 convs are
handled the same way (they are linears on pixels).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rankwise.layers.base import DenseSpec, register_format
from rankwise.layers.shapes import ConvSpec
from rankwise.layers.two_conv import (
    TwoConvLowRank,
    conv_spec_of,
    require_conv_spec,
)
from rankwise.linalg.grouped import (
    channel_matricize_groups,
    channel_unmatricize_groups,
    grouped_balanced_factors,
)


def channel_factor_specs(spec: ConvSpec, rank: int) -> tuple[ConvSpec, ConvSpec]:
    """The two sub-convs at per-group `rank`: (kh×kw conv `c → g·r`, 1×1 conv `g·r → n`)."""
    g = spec.groups
    first = ConvSpec(
        in_channels=spec.in_channels,
        out_channels=g * rank,
        kernel_size=spec.kernel_size,
        stride=spec.stride,
        padding=spec.padding,
        dilation=spec.dilation,
        groups=g,
        bias=False,
        padding_mode=spec.padding_mode,
    )
    second = ConvSpec(
        in_channels=g * rank, out_channels=spec.out_channels, kernel_size=(1, 1), groups=g,
        bias=spec.bias,
    )
    return first, second


@register_format
class ChannelLowRankConv2d(TwoConvLowRank):
    """`y = second(first(x))`: kh×kw conv `c → g·r`, then 1×1 conv `g·r → n` (bias).

    Input `(B, c, H, W)`, output `(B, n, H', W')` as for the dense conv. `rank` is per group.
    Params `r·c·kh·kw + n·r (+ n bias)`; MACs `H'·W'·(r·c·kh·kw + n·r)`.
    """

    format = "channel"

    @classmethod
    def factor_specs(cls, spec: ConvSpec, rank: int) -> tuple[ConvSpec, ConvSpec]:
        return channel_factor_specs(spec, rank)

    @classmethod
    def per_pixel_macs(cls, spec: ConvSpec, rank: int) -> int:
        kh, kw = spec.kernel_size
        return rank * spec.in_channels * kh * kw + spec.out_channels * rank

    matricize_groups = staticmethod(channel_matricize_groups)  # per group `(n/g, (c/g)·kh·kw)`

    @classmethod
    def from_dense(
        cls, layer: nn.Module, rank: Any, *, name: str | None = None
    ) -> ChannelLowRankConv2d:
        """Per-group truncated SVD of the channel matricization; same dtype/device as the weight."""
        spec = conv_spec_of(layer, cls.format, name)
        w = layer.weight.detach()
        out = cls(spec, rank, name=name, device=w.device, dtype=w.dtype)
        r, g = out._rank, spec.groups
        a, b = grouped_balanced_factors(channel_matricize_groups(w, g), r)
        # a: (g, n/g, r) -> (n, r, 1, 1);  b: (g, r, (c/g)·kh·kw) -> (g·r, c/g, kh, kw)
        with torch.no_grad():
            out.second.weight.copy_(a.reshape(spec.out_channels, r, 1, 1))
            out.first.weight.copy_(b.reshape(out.first.weight.shape))
            if spec.bias:
                out.second.bias.copy_(layer.bias.detach())
        return out

    @classmethod
    def max_rank(cls, spec: DenseSpec) -> tuple[int, ...]:
        """`(min(n/g, (c/g)·kh·kw),)` — per group."""
        spec = require_conv_spec(spec, cls.format, None)
        g = spec.groups
        kh, kw = spec.kernel_size
        return (min(spec.out_channels // g, spec.in_channels // g * kh * kw),)

    def dense_weight(self) -> torch.Tensor:
        """`A_j B_j` per group, shape `(n, c/g, kh, kw)`."""
        s, g, r = self.dense_spec, self.dense_spec.groups, self._rank
        a = self.second.weight.reshape(g, s.out_channels // g, r)
        b = self.first.weight.reshape(g, r, -1)
        shape = (s.out_channels, s.in_channels // g, *s.kernel_size)
        return channel_unmatricize_groups(a @ b, shape)
