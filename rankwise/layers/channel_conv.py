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

from rankwise.errors import UnsupportedLayerError
from rankwise.layers.base import DenseSpec, FactorizedLayer, register_format
from rankwise.layers.lowrank_linear import check_rank
from rankwise.layers.shapes import ConvSpec, Pair, conv2d_macs, conv2d_output_hw, conv2d_params
from rankwise.linalg.grouped import (
    channel_matricize_groups,
    channel_unmatricize_groups,
    grouped_balanced_factors,
    pooled_singular_values,
)


def describe_conv(spec: ConvSpec) -> str:
    """Short description of a dense conv, used in messages when no module path is known."""
    return (
        f"Conv2d({spec.in_channels}, {spec.out_channels}, kernel_size={spec.kernel_size}, "
        f"groups={spec.groups})"
    )


def require_conv_spec(spec: DenseSpec, fmt: str, where: str | None) -> ConvSpec:
    """`spec` if it is a `ConvSpec`, else `UnsupportedLayerError` naming the layer and the fix."""
    if not isinstance(spec, ConvSpec):
        raise UnsupportedLayerError(
            f"{where or spec}: format {fmt!r} factorizes nn.Conv2d only, got "
            f"{type(spec).__name__}; use format 'svd' (or 'tt') for nn.Linear"
        )
    return spec


def conv_spec_of(layer: nn.Module, fmt: str, name: str | None) -> ConvSpec:
    """The `ConvSpec` of a dense `nn.Conv2d`, or `UnsupportedLayerError` naming the layer."""
    where = name or type(layer).__name__
    if not isinstance(layer, nn.Conv2d):
        raise UnsupportedLayerError(
            f"{where}: format {fmt!r} factorizes nn.Conv2d only, got {type(layer).__name__}; "
            "use format 'svd' (or 'tt') for nn.Linear and keep other layers dense"
        )
    if isinstance(layer.weight, nn.parameter.UninitializedParameter):
        raise UnsupportedLayerError(
            f"{where}: weight is not initialised yet; run one forward pass before factorizing"
        )
    return ConvSpec.from_conv(layer)


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


def _make(
    spec: ConvSpec, device: torch.device | str | None, dtype: torch.dtype | None
) -> nn.Conv2d:
    return spec.make().to(device=device, dtype=dtype)


@register_format
class ChannelLowRankConv2d(FactorizedLayer):
    """`y = second(first(x))`: kh×kw conv `c → g·r`, then 1×1 conv `g·r → n` (bias).

    Input `(B, c, H, W)`, output `(B, n, H', W')` as for the dense conv. `rank` is per group.
    """

    format = "channel"
    dense_type = nn.Conv2d

    def __init__(
        self,
        spec: ConvSpec,
        rank: int,
        *,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        spec = require_conv_spec(spec, self.format, name)
        r = check_rank(
            rank, self.max_rank(spec)[0], self.format, name or describe_conv(spec),
            per_group=spec.groups > 1,
        )
        self.dense_spec = spec
        self._rank = r
        first, second = channel_factor_specs(spec, r)
        self.first = _make(first, device, dtype)
        self.second = _make(second, device, dtype)

    # ----- construction -------------------------------------------------------------------
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
    def from_spec(
        cls,
        spec: DenseSpec,
        rank: Any,
        *,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ChannelLowRankConv2d:
        """Fresh layer (default `nn.Conv2d` init of both sub-convs)."""
        return cls(spec, rank, name=name, device=device, dtype=dtype)  # type: ignore[arg-type]

    # ----- rank bookkeeping ---------------------------------------------------------------
    @classmethod
    def max_rank(cls, spec: DenseSpec) -> tuple[int, ...]:
        """`(min(n/g, (c/g)·kh·kw),)` — per group."""
        spec = require_conv_spec(spec, cls.format, None)
        g = spec.groups
        kh, kw = spec.kernel_size
        return (min(spec.out_channels // g, spec.in_channels // g * kh * kw),)

    @classmethod
    def spectra(cls, weight: torch.Tensor, spec: DenseSpec) -> list[torch.Tensor]:
        """`[s]`, `s (max_rank,)` descending: singular values of the `(n/g, (c/g)·kh·kw)` matrix.

        With groups, `s_i = sqrt(Σ_j σ_{j,i}²)` pools the groups' i-th singular values
        (`pooled_singular_values`): keeping rank r per group leaves error `sqrt(Σ_{i>r} s_i²)`.
        """
        spec = require_conv_spec(spec, cls.format, None)
        check_conv_weight(weight, spec)
        return [pooled_singular_values(channel_matricize_groups(weight.detach(), spec.groups))]

    @classmethod
    def cost(cls, spec: DenseSpec, rank: Any, input_hw: Pair | None = None) -> tuple[int, int]:
        """`(params, MACs)`: params `r·c·kh·kw + n·r (+ n bias)`; MACs `H'·W'·(r·c·kh·kw + n·r)`.

        `input_hw=None` gives MACs per output pixel (`H' = W' = 1`).
        """
        spec = require_conv_spec(spec, cls.format, None)
        r = check_rank(rank, cls.max_rank(spec)[0], cls.format, describe_conv(spec),
                       per_group=spec.groups > 1)
        first, second = channel_factor_specs(spec, r)
        params = conv2d_params(first) + conv2d_params(second)
        if input_hw is None:
            kh, kw = spec.kernel_size
            return params, r * spec.in_channels * kh * kw + spec.out_channels * r
        mid_hw = conv2d_output_hw(first, input_hw)
        return params, conv2d_macs(first, input_hw) + conv2d_macs(second, mid_hw)

    # ----- forward / reconstruction -------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, c, H, W) -> (B, n, H', W')`."""
        return self.second(self.first(x))

    @property
    def bias(self) -> torch.Tensor | None:
        """The dense conv's bias `(n,)` (lives in `second`), or None."""
        return self.second.bias

    def dense_weight(self) -> torch.Tensor:
        """`A_j B_j` per group, shape `(n, c/g, kh, kw)`."""
        s, g, r = self.dense_spec, self.dense_spec.groups, self._rank
        a = self.second.weight.reshape(g, s.out_channels // g, r)
        b = self.first.weight.reshape(g, r, -1)
        shape = (s.out_channels, s.in_channels // g, *s.kernel_size)
        return channel_unmatricize_groups(a @ b, shape)

    def extra_repr(self) -> str:
        s = self.dense_spec
        return (
            f"{s.in_channels} -> {s.out_channels}, kernel_size={s.kernel_size}, "
            f"stride={s.stride}, padding={s.padding!r}, dilation={s.dilation}, "
            f"groups={s.groups}, rank={self._rank} (max {self.max_rank(s)[0]}"
            f"{' per group' if s.groups > 1 else ''}), padding_mode={s.padding_mode}"
        )


def check_conv_weight(weight: torch.Tensor, spec: ConvSpec) -> None:
    """Raise `UnsupportedLayerError` unless `weight` has the shape `(n, c/g, kh, kw)` of `spec`."""
    expected = (spec.out_channels, spec.in_channels // spec.groups, *spec.kernel_size)
    if tuple(weight.shape) != expected:
        raise UnsupportedLayerError(
            f"{describe_conv(spec)}: weight has shape {tuple(weight.shape)}, expected {expected}; "
            "pass the weight of the conv this spec describes"
        )
