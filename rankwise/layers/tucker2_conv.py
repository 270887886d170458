"""Tucker-2 factorized convolution (Kim et al. 2016; ELRT's format), format "tucker2".

`W (n, c/g, kh, kw) ≈ G ×₁ U_out ×₂ U_in`, run as three convolutions:

1. `first`: 1×1 conv c → g·r_i, no bias (`U_inᵀ`),
2. `core`:  kh×kw conv g·r_i → g·r_o with the dense stride / padding / dilation /
   padding_mode (`G`),
3. `last`:  1×1 conv g·r_o → n with the dense bias (`U_out`).

The 1×1 convs commute with every padding mode (padding acts on each channel alike), so padding is
applied once, by the core conv. Grouped convs (g > 1) are factorized **per group**: each group has
its own `(U_out, G, U_in)` at the same rank `(r_out, r_in)`, and the three sub-convs are grouped.
Rank is the tuple `(r_out, r_in)`, per group.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import torch
from torch import nn

from rankwise.errors import RankError, UnsupportedLayerError
from rankwise.layers.base import DenseSpec, FactorizedLayer, Rank, register_format
from rankwise.layers.shapes import ConvSpec, Pair, conv2d_macs, conv2d_output_hw, conv2d_params
from rankwise.linalg.tucker import mode_spectra, partial_tucker2, tucker2_reconstruct


def describe_conv(spec: ConvSpec, name: str | None) -> str:
    """`'<name> (Conv2d c→n, kernel kh×kw, groups g)'` for error messages."""
    kh, kw = spec.kernel_size
    label = name if name else "<unnamed>"
    return (f"{label} (Conv2d {spec.in_channels}→{spec.out_channels}, kernel {kh}×{kw}, "
            f"groups {spec.groups})")


def conv_pixel_macs(spec: ConvSpec) -> int:
    """MACs of one output position of a conv: out_channels·(in_channels/groups)·kh·kw."""
    kh, kw = spec.kernel_size
    return spec.out_channels * (spec.in_channels // spec.groups) * kh * kw


def chain_cost(specs: list[ConvSpec], input_hw: Pair | None) -> tuple[int, int]:
    """(params, MACs) of convs applied in sequence; shapes are propagated with
    `conv2d_output_hw`. With `input_hw=None`, MACs are per output position, each conv counted
    once per position (the methods.md / TRP convention)."""
    params = sum(conv2d_params(s) for s in specs)
    if input_hw is None:
        return params, sum(conv_pixel_macs(s) for s in specs)
    macs, hw = 0, (int(input_hw[0]), int(input_hw[1]))
    for s in specs:
        macs += conv2d_macs(s, hw)
        hw = conv2d_output_hw(s, hw)
    return params, macs


def as_conv_spec(spec: DenseSpec, fmt: str) -> ConvSpec:
    if not isinstance(spec, ConvSpec):
        raise UnsupportedLayerError(
            f"format {fmt!r} factorizes nn.Conv2d, got a spec of {type(spec).__name__}; use "
            "format 'svd' or 'tt' for linear layers"
        )
    return spec


@register_format
class Tucker2Conv2d(FactorizedLayer):
    """Tucker-2 conv: 1×1 (c→g·r_i) → kh×kw (g·r_i→g·r_o) → 1×1 (g·r_o→n, bias)."""

    format = "tucker2"
    dense_type = nn.Conv2d

    def __init__(self, spec: ConvSpec, rank: tuple[int, int]) -> None:
        super().__init__()
        self.dense_spec = spec
        self._rank = rank
        first, core, last = self.sub_specs(spec, rank)
        self.first = first.make()
        self.core = core.make()
        self.last = last.make()

    # ----- shapes ---------------------------------------------------------------------------
    @staticmethod
    def sub_specs(spec: ConvSpec, rank: tuple[int, int]) -> list[ConvSpec]:
        """The three sub-conv specs (first, core, last) at `rank = (r_out, r_in)` per group."""
        g = spec.groups
        r_o, r_i = rank
        first = ConvSpec(spec.in_channels, g * r_i, (1, 1), groups=g, bias=False)
        core = ConvSpec(g * r_i, g * r_o, spec.kernel_size, stride=spec.stride,
                        padding=spec.padding, dilation=spec.dilation, groups=g, bias=False,
                        padding_mode=spec.padding_mode)
        last = ConvSpec(g * r_o, spec.out_channels, (1, 1), groups=g, bias=spec.bias)
        return [first, core, last]

    @classmethod
    def max_rank(cls, spec: DenseSpec) -> tuple[int, ...]:
        """Per group: `(min(n_g, c_g·kh·kw), min(c_g, n_g·kh·kw))` with n_g = n/g, c_g = c/g — the
        ranks of the mode-0 / mode-1 unfoldings; at this rank the factorization is exact."""
        spec = as_conv_spec(spec, cls.format)
        kh, kw = spec.kernel_size
        n_g, c_g = spec.out_channels // spec.groups, spec.in_channels // spec.groups
        return (min(n_g, c_g * kh * kw), min(c_g, n_g * kh * kw))

    @classmethod
    def check_rank(cls, spec: ConvSpec, rank: Any, name: str | None = None) -> tuple[int, int]:
        """`rank` as `(r_out, r_in)`, or `RankError` naming the layer, its limit and the fix."""
        where = describe_conv(spec, name)
        limit = cls.max_rank(spec)
        if (not isinstance(rank, (tuple, list)) or len(rank) != 2
                or not all(isinstance(r, Integral) and not isinstance(r, bool) for r in rank)):
            raise RankError(
                f"tucker2 rank for {where} must be a pair (r_out, r_in) of ints, got {rank!r}; "
                f"its limit is {limit} (per group), pass e.g. "
                f"rank=({max(1, limit[0] // 2)}, {max(1, limit[1] // 2)})"
            )
        r = (int(rank[0]), int(rank[1]))
        if min(r) < 1 or r[0] > limit[0] or r[1] > limit[1]:
            raise RankError(
                f"tucker2 rank {r} is invalid for {where}: each entry must be ≥ 1 and at most "
                f"the limit {limit} (per group); choose 1 ≤ r_out ≤ {limit[0]} and "
                f"1 ≤ r_in ≤ {limit[1]}"
            )
        return r

    # ----- construction -----------------------------------------------------------------------
    @classmethod
    def from_dense(cls, layer: nn.Module, rank: Rank, *, name: str | None = None,
                   n_iter: int = 0, **options: Any) -> Tucker2Conv2d:
        """HOSVD (+ `n_iter` HOOI sweeps) of `layer.weight (n, c/g, kh, kw)`, per group, computed
        in float64 and cast to the layer's dtype/device."""
        _reject_options(options, name)
        if not isinstance(layer, nn.Conv2d):
            raise UnsupportedLayerError(
                f"tucker2 factorizes nn.Conv2d, but {name or '<unnamed>'} is "
                f"{type(layer).__name__}; use format 'svd' or 'tt' for nn.Linear"
            )
        spec = ConvSpec.from_conv(layer)
        r_o, r_i = cls.check_rank(spec, rank, name)
        g = spec.groups
        w = layer.weight.detach().to(torch.float64)
        n_g = spec.out_channels // g
        cores, u_outs, u_ins = [], [], []
        for k in range(g):
            t = partial_tucker2(w[k * n_g:(k + 1) * n_g], (r_o, r_i), n_iter=n_iter)
            cores.append(t.core)
            u_outs.append(t.u_out)
            u_ins.append(t.u_in.T)
        out = cls(spec, (r_o, r_i)).to(device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            out.first.weight.copy_(torch.cat(u_ins, 0)[:, :, None, None])
            out.core.weight.copy_(torch.cat(cores, 0))
            out.last.weight.copy_(torch.cat(u_outs, 0)[:, :, None, None])
            if layer.bias is not None:
                out.last.bias.copy_(layer.bias)
        return out

    @classmethod
    def from_spec(cls, spec: DenseSpec, rank: Rank, *, name: str | None = None,
                  device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                  **options: Any) -> Tucker2Conv2d:
        """Fresh layer: each sub-conv has PyTorch's default initialisation."""
        options.pop("n_iter", None)
        _reject_options(options, name)
        spec = as_conv_spec(spec, cls.format)
        return cls(spec, cls.check_rank(spec, rank, name)).to(device=device, dtype=dtype)

    # ----- policies and counting --------------------------------------------------------------
    @classmethod
    def spectra(cls, weight: torch.Tensor, spec: DenseSpec) -> list[torch.Tensor]:
        """`[σ(mode-0 unfolding), σ(mode-1 unfolding)]`, lengths `max_rank(spec)`. For g > 1 the
        per-group spectra are combined as `σ_i = sqrt(Σ_g σ_{g,i}²)`, so the energy of the top-k
        entries is exactly the energy a shared rank k keeps over all groups."""
        spec = as_conv_spec(spec, cls.format)
        g = spec.groups
        w = weight.detach().to(torch.float64)
        n_g = spec.out_channels // g
        s0 = torch.zeros(cls.max_rank(spec)[0], dtype=torch.float64, device=w.device)
        s1 = torch.zeros(cls.max_rank(spec)[1], dtype=torch.float64, device=w.device)
        for k in range(g):
            a, b = mode_spectra(w[k * n_g:(k + 1) * n_g])
            s0 += a.pow(2)
            s1 += b.pow(2)
        return [s0.sqrt(), s1.sqrt()]

    @classmethod
    def cost(cls, spec: DenseSpec, rank: Rank, input_hw: Pair | None = None) -> tuple[int, int]:
        """params = c·r_i + g·r_o·r_i·kh·kw + n·r_o (+ n bias); MACs = Σ sub-conv MACs
        (`conv2d_macs` on the propagated shapes), per output position when `input_hw` is None."""
        spec = as_conv_spec(spec, cls.format)
        return chain_cost(cls.sub_specs(spec, cls.check_rank(spec, rank)), input_hw)

    # ----- forward and reconstruction ---------------------------------------------------------
    @property
    def bias(self) -> torch.Tensor | None:
        return self.last.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x (B, c, H, W)` → `(B, n, H', W')`, the dense conv's output shape."""
        return self.last(self.core(self.first(x)))

    def dense_weight(self) -> torch.Tensor:
        """`(n, c/g, kh, kw)`: per group `G ×₁ U_out ×₂ U_in`."""
        g = self.dense_spec.groups
        u_in = self.first.weight[:, :, 0, 0].chunk(g, 0)  # g × (r_i, c_g)
        core = self.core.weight.chunk(g, 0)  # g × (r_o, r_i, kh, kw)
        u_out = self.last.weight[:, :, 0, 0].chunk(g, 0)  # g × (n_g, r_o)
        return torch.cat([tucker2_reconstruct(gk, uo, ui.T)
                          for gk, uo, ui in zip(core, u_out, u_in, strict=True)], 0)

    def extra_repr(self) -> str:
        s = self.dense_spec
        return (f"rank={self._rank}, {s.in_channels}→{s.out_channels}, kernel={s.kernel_size}, "
                f"stride={s.stride}, padding={s.padding}, groups={s.groups}")


def _reject_options(options: dict[str, Any], name: str | None) -> None:
    if options:
        raise TypeError(
            f"unknown option(s) {sorted(options)} for tucker2 layer {name or '<unnamed>'}; "
            "tucker2 accepts only n_iter (HOOI sweeps, from_dense)"
        )
