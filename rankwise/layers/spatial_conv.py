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

from rankwise.layers.base import DenseSpec, FactorizedLayer, register_format
from rankwise.layers.channel_conv import (
    check_conv_weight,
    conv_spec_of,
    describe_conv,
    require_conv_spec,
)
from rankwise.layers.lowrank_linear import check_rank
from rankwise.layers.shapes import ConvSpec, Pair, conv2d_macs, conv2d_output_hw, conv2d_params
from rankwise.linalg.grouped import (
    grouped_balanced_factors,
    pooled_singular_values,
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
class SpatialLowRankConv2d(FactorizedLayer):
    """`y = second(first(x))`: kh×1 conv `c → g·r`, then 1×kw conv `g·r → n` (bias).

    Input `(B, c, H, W)`, output `(B, n, H', W')` as for the dense conv. `rank` is per group.
    """

    format = "spatial"
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
        first, second = spatial_factor_specs(spec, r)
        self.first = first.make().to(device=device, dtype=dtype)
        self.second = second.make().to(device=device, dtype=dtype)

    # ----- construction -------------------------------------------------------------------
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

    @classmethod
    def from_spec(
        cls,
        spec: DenseSpec,
        rank: Any,
        *,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SpatialLowRankConv2d:
        """Fresh layer (default `nn.Conv2d` init of both sub-convs)."""
        return cls(spec, rank, name=name, device=device, dtype=dtype)  # type: ignore[arg-type]

    # ----- rank bookkeeping ---------------------------------------------------------------
    @classmethod
    def max_rank(cls, spec: DenseSpec) -> tuple[int, ...]:
        """`(min((n/g)·kw, (c/g)·kh),)` — per group."""
        spec = require_conv_spec(spec, cls.format, None)
        g = spec.groups
        kh, kw = spec.kernel_size
        return (min(spec.out_channels // g * kw, spec.in_channels // g * kh),)

    @classmethod
    def spectra(cls, weight: torch.Tensor, spec: DenseSpec) -> list[torch.Tensor]:
        """`[s]`, `s (max_rank,)` descending: singular values of the `((n/g)·kw, (c/g)·kh)` matrix.

        With groups, `s_i = sqrt(Σ_j σ_{j,i}²)` pools the groups' i-th singular values
        (`pooled_singular_values`): keeping rank r per group leaves error `sqrt(Σ_{i>r} s_i²)`.
        """
        spec = require_conv_spec(spec, cls.format, None)
        check_conv_weight(weight, spec)
        return [pooled_singular_values(spatial_matricize_groups(weight.detach(), spec.groups))]

    @classmethod
    def cost(cls, spec: DenseSpec, rank: Any, input_hw: Pair | None = None) -> tuple[int, int]:
        """`(params, MACs)`: params `r·c·kh + n·r·kw (+ n bias)`; MACs of both sub-convs.

        With stride 1 and "same" padding the MACs are `H·W·(r·c·kh + n·r·kw)`; in general the
        intermediate map is `(H', W_in')` (strided in H only), so the first conv is counted on it.
        `input_hw=None` gives MACs per output pixel, `r·c·kh + n·r·kw` (TRP's counting).
        """
        spec = require_conv_spec(spec, cls.format, None)
        r = check_rank(rank, cls.max_rank(spec)[0], cls.format, describe_conv(spec),
                       per_group=spec.groups > 1)
        first, second = spatial_factor_specs(spec, r)
        params = conv2d_params(first) + conv2d_params(second)
        if input_hw is None:
            kh, kw = spec.kernel_size
            return params, r * spec.in_channels * kh + spec.out_channels * r * kw
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
        """`A_j B_j` per group, un-matricized, shape `(n, c/g, kh, kw)`."""
        s, g, r = self.dense_spec, self.dense_spec.groups, self._rank
        n, (kh, kw) = s.out_channels, s.kernel_size
        a = self.second.weight.reshape(g, n // g, r, kw).permute(0, 1, 3, 2)
        a = a.reshape(g, n // g * kw, r)
        b = self.first.weight.reshape(g, r, -1)
        return spatial_unmatricize_groups(a @ b, (n, s.in_channels // g, kh, kw))

    def extra_repr(self) -> str:
        s = self.dense_spec
        return (
            f"{s.in_channels} -> {s.out_channels}, kernel_size={s.kernel_size}, "
            f"stride={s.stride}, padding={s.padding!r}, dilation={s.dilation}, "
            f"groups={s.groups}, rank={self._rank} (max {self.max_rank(s)[0]}"
            f"{' per group' if s.groups > 1 else ''}), padding_mode={s.padding_mode}"
        )
