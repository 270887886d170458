"""CP-factorized convolution (Lebedev et al. 2015), format "cp".

`W (n, c/g, kh, kw) ≈ Σ_r a_r ∘ b_r ∘ h_r ∘ v_r`, run as four convolutions:

1. `first`: 1×1 conv c → g·R, no bias (`B`),
2. `vertical`: depthwise kh×1 conv on g·R channels carrying the H part of stride / padding /
   dilation (`H`),
3. `horizontal`: depthwise 1×kw conv carrying the W part (`V`),
4. `last`: 1×1 conv g·R → n with the dense bias (`A`).

Padding splits exactly across the two depthwise convs for every padding mode: zero, reflect,
replicate and circular padding are separable index maps (rows then columns), and "same" / "valid"
are passed to both (PyTorch computes "same" per dimension). Grouped convs (g > 1) are factorized
per group at the same rank R.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import torch
from torch import nn

from rankwise.errors import RankError, UnsupportedLayerError
from rankwise.layers.base import DenseSpec, FactorizedLayer, Rank, register_format
from rankwise.layers.shapes import ConvSpec, Pair
from rankwise.layers.tucker2_conv import as_conv_spec, chain_cost, describe_conv
from rankwise.linalg.cp import CP4, cp_als_batch, cp_exact, cp_reconstruct

EXACT_RTOL = 1e-7  # singular values below this fraction of the largest count as zero (cp_exact)
_OPTIONS = ("n_iter_max", "tol", "seed", "callback", "method")


def _split_padding(padding: Pair | str, axis: int) -> Pair | str:
    """The padding of the kh×1 (`axis=0`) or 1×kw (`axis=1`) conv."""
    if isinstance(padding, str):
        return padding
    return (padding[0], 0) if axis == 0 else (0, padding[1])


@register_format
class CPConv2d(FactorizedLayer):
    """CP conv: 1×1 (c→g·R) → depthwise kh×1 → depthwise 1×kw → 1×1 (g·R→n, bias)."""

    format = "cp"
    dense_type = nn.Conv2d

    def __init__(self, spec: ConvSpec, rank: int) -> None:
        super().__init__()
        self.dense_spec = spec
        self._rank = rank
        first, vertical, horizontal, last = self.sub_specs(spec, rank)
        self.first = first.make()
        self.vertical = vertical.make()
        self.horizontal = horizontal.make()
        self.last = last.make()

    @staticmethod
    def sub_specs(spec: ConvSpec, rank: int) -> list[ConvSpec]:
        """The four sub-conv specs (first, vertical, horizontal, last) at CP rank R per group."""
        g, r = spec.groups, rank
        (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
        first = ConvSpec(spec.in_channels, g * r, (1, 1), groups=g, bias=False)
        vertical = ConvSpec(g * r, g * r, (kh, 1), stride=(sh, 1),
                            padding=_split_padding(spec.padding, 0), dilation=(dh, 1),
                            groups=g * r, bias=False, padding_mode=spec.padding_mode)
        horizontal = ConvSpec(g * r, g * r, (1, kw), stride=(1, sw),
                              padding=_split_padding(spec.padding, 1), dilation=(1, dw),
                              groups=g * r, bias=False, padding_mode=spec.padding_mode)
        last = ConvSpec(g * r, spec.out_channels, (1, 1), groups=g, bias=spec.bias)
        return [first, vertical, horizontal, last]

    @classmethod
    def max_rank(cls, spec: DenseSpec) -> tuple[int, ...]:
        """`(R_max,)` per group with `R_max = min(c_g·kh·kw, n_g·kh·kw, n_g·c_g·kw, n_g·c_g·kh)`:
        the classical bound on the rank of a 4-way tensor (product of all modes but the largest),
        so every weight is exactly representable at `R_max`. For the usual n, c ≥ kh·kw this is
        `min(n_g, c_g)·kh·kw`."""
        spec = as_conv_spec(spec, cls.format)
        kh, kw = spec.kernel_size
        n_g, c_g = spec.out_channels // spec.groups, spec.in_channels // spec.groups
        return (min(c_g * kh * kw, n_g * kh * kw, n_g * c_g * kw, n_g * c_g * kh),)

    @classmethod
    def check_rank(cls, spec: ConvSpec, rank: Any, name: str | None = None) -> int:
        """`rank` (an int, or a 1-tuple) as an int, or `RankError` naming the layer and limit."""
        where = describe_conv(spec, name)
        (limit,) = cls.max_rank(spec)
        if isinstance(rank, (tuple, list)) and len(rank) == 1:
            rank = rank[0]
        if not isinstance(rank, Integral) or isinstance(rank, bool):
            raise RankError(
                f"cp rank for {where} must be one integer R, got {rank!r}; its limit is {limit} "
                f"(per group), pass e.g. rank={max(1, limit // 4)}"
            )
        r = int(rank)
        if not 1 <= r <= limit:
            raise RankError(
                f"cp rank {r} is invalid for {where}: it must be ≥ 1 and at most the limit "
                f"{limit} (per group); choose 1 ≤ R ≤ {limit}"
            )
        return r

    @classmethod
    def from_dense(cls, layer: nn.Module, rank: Rank, *, name: str | None = None,
                   **options: Any) -> CPConv2d:
        """CP of `layer.weight (n, c/g, kh, kw)` per group, cast to the layer's dtype.

        `method="als"` (default): CP-ALS (float64, SVD init, deterministic; options
        `n_iter_max=200` caps the sweeps, `tol=1e-6`, `seed=0`, `callback(sweep, rel_error)`
        reports progress). The defaults stop once a sweep improves the relative error by < 1e-6
        of itself (enough for fine-tuning to start from); pass larger values for a tighter fit.
        `method="exact"`: the iteration-free exact CP of `rankwise.linalg.cp.cp_exact`; `rank`
        must be at least `exact_rank(layer.weight, spec)` (extra components are zero)."""
        _reject_options(options, name)
        method = options.pop("method", "als")
        if method not in ("als", "exact"):
            raise ValueError(f"cp method must be 'als' or 'exact', got {method!r}")
        options = {"n_iter_max": 200, "tol": 1e-6, **options}
        if not isinstance(layer, nn.Conv2d):
            raise UnsupportedLayerError(
                f"cp factorizes nn.Conv2d, but {name or '<unnamed>'} is {type(layer).__name__}; "
                "use format 'svd' or 'tt' for nn.Linear"
            )
        spec = ConvSpec.from_conv(layer)
        r = cls.check_rank(spec, rank, name)
        g = spec.groups
        n_g = spec.out_channels // g
        w = layer.weight.detach().to(torch.float64)
        groups = w.reshape(g, n_g, *w.shape[1:])  # (g, n_g, c_g, kh, kw)
        if method == "exact":
            where = describe_conv(spec, name)
            parts = [_pad(cp_exact(wk, EXACT_RTOL), r, where) for wk in groups]
            f = CP4(*(torch.stack([getattr(p, k) for p in parts]) for k in CP4._fields))
        else:
            f = cp_als_batch(groups, r, **options)  # all groups at once: (g, d, R) factors
        out = cls(spec, r).to(device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():  # group k's components are channels k·R .. (k+1)·R − 1
            out.first.weight.copy_(f.inp.transpose(1, 2).reshape(g * r, -1)[:, :, None, None])
            out.vertical.weight.copy_(f.kh.transpose(1, 2).reshape(g * r, -1)[:, None, :, None])
            out.horizontal.weight.copy_(
                f.kw.transpose(1, 2).reshape(g * r, -1)[:, None, None, :])
            out.last.weight.copy_(f.out.reshape(g * n_g, r)[:, :, None, None])
            if layer.bias is not None:
                out.last.bias.copy_(layer.bias)
        return out

    @classmethod
    def exact_rank(cls, weight: torch.Tensor, spec: DenseSpec) -> int:
        """A rank at which `from_dense(method="exact")` is exact: over the groups of
        `weight (n, c/g, kh, kw)`, the largest `min_m Π_{k≠m} r_k` of the multilinear ranks `r_k`
        (an upper bound on each group's `cp_exact` rank; batched over groups)."""
        spec = as_conv_spec(spec, cls.format)
        g = spec.groups
        w = weight.detach().to(torch.float64).reshape(g, -1, *weight.shape[1:])
        ranks = []
        for mode in range(4):
            s = torch.linalg.svdvals(w.movedim(mode + 1, 1).reshape(g, w.shape[mode + 1], -1))
            top = s[:, :1].clamp_min(1e-300)
            ranks.append((s > EXACT_RTOL * top).sum(1).clamp_min(1))
        r = torch.stack(ranks, 1)  # (g, 4)
        bound = (r.prod(1, keepdim=True) // r).amin(1)  # min over the dropped mode m
        return int(bound.max())

    @classmethod
    def from_spec(cls, spec: DenseSpec, rank: Rank, *, name: str | None = None,
                  device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                  **options: Any) -> CPConv2d:
        """Fresh layer: each sub-conv has PyTorch's default initialisation."""
        _reject_options(options, name)
        spec = as_conv_spec(spec, cls.format)
        return cls(spec, cls.check_rank(spec, rank, name)).to(device=device, dtype=dtype)

    @classmethod
    def spectra(cls, weight: torch.Tensor, spec: DenseSpec) -> list[torch.Tensor]:
        """`[σ]` of the channel matricization `(n_g, c_g·kh·kw)` (its rank is a lower bound on the
        CP rank), length `min(n_g, c_g·kh·kw)`; for g > 1 combined as `sqrt(Σ_g σ_{g,i}²)`."""
        spec = as_conv_spec(spec, cls.format)
        g = spec.groups
        n_g = spec.out_channels // g
        w = weight.detach().to(torch.float64)
        s = torch.linalg.svdvals(w.reshape(g, n_g, -1))  # (g, min(n_g, c_g·kh·kw)), batched
        return [s.pow(2).sum(0).sqrt()]

    @classmethod
    def cost(cls, spec: DenseSpec, rank: Rank, input_hw: Pair | None = None) -> tuple[int, int]:
        """params = c·R + g·R·(kh + kw) + n·R (+ n bias); MACs = Σ sub-conv MACs on the
        propagated shapes (per output position when `input_hw` is None)."""
        spec = as_conv_spec(spec, cls.format)
        return chain_cost(cls.sub_specs(spec, cls.check_rank(spec, rank)), input_hw)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.last.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x (B, c, H, W)` → `(B, n, H', W')`, the dense conv's output shape."""
        return self.last(self.horizontal(self.vertical(self.first(x))))

    def dense_weight(self) -> torch.Tensor:
        """`(n, c/g, kh, kw)`: per group `Σ_r a_r ∘ b_r ∘ h_r ∘ v_r`."""
        g = self.dense_spec.groups
        a = self.last.weight[:, :, 0, 0].chunk(g, 0)  # g × (n_g, R)
        b = self.first.weight[:, :, 0, 0].chunk(g, 0)  # g × (R, c_g)
        h = self.vertical.weight[:, 0, :, 0].chunk(g, 0)  # g × (R, kh)
        v = self.horizontal.weight[:, 0, 0, :].chunk(g, 0)  # g × (R, kw)
        return torch.cat([cp_reconstruct((ak, bk.T, hk.T, vk.T))
                          for ak, bk, hk, vk in zip(a, b, h, v, strict=True)], 0)

    def extra_repr(self) -> str:
        s = self.dense_spec
        return (f"rank={self._rank}, {s.in_channels}→{s.out_channels}, kernel={s.kernel_size}, "
                f"stride={s.stride}, padding={s.padding}, groups={s.groups}")


def _reject_options(options: dict[str, Any], name: str | None) -> None:
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for cp layer {name or '<unnamed>'}; cp accepts "
            f"{', '.join(_OPTIONS)} (CP-ALS settings, from_dense)"
        )


def _pad(f: CP4, rank: int, where: str) -> CP4:
    """`f` with zero components appended up to `rank` columns."""
    have = f.out.shape[1]
    if have > rank:
        raise RankError(f"cp rank {rank} is below the exact rank {have} of {where}; pass a rank "
                        f">= {have} with method='exact'")
    return CP4(*(torch.cat([x, x.new_zeros(x.shape[0], rank - have)], 1) for x in f))

