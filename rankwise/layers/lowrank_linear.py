"""`LowRankLinear` (format "svd"): an `nn.Linear` replaced by two thinner linears.

`W (out, in) ≈ U V` with `U = U_r √S_r (out, r)` and `V = √S_r V_rᵀ (r, in)` (truncated SVD,
balanced scaling). As modules: `first = Linear(in → r, no bias)` holds `V`, `second =
Linear(r → out, bias)` holds `U` and the dense bias.

`weight` / `bias` / `in_features` / `out_features` read like an `nn.Linear`'s (`weight` is the
effective dense product, recomputed per read), so code that reads them keeps working.

This file also holds `check_rank`, the rank validation shared by the SVD-based formats
("svd", "channel", "spatial").
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import nn

from rankwise.errors import RankError, UnsupportedLayerError
from rankwise.layers.base import DenseSpec, FactorizedLayer, register_format
from rankwise.layers.shapes import LinearSpec, Pair, linear_macs, linear_params
from rankwise.linalg.grouped import grouped_balanced_factors, svd_dtype
from rankwise.linalg.svd import svdvals


def check_rank(rank: Any, max_rank: int, fmt: str, where: str, per_group: bool = False) -> int:
    """Validate an SVD-format rank and return it as an `int`.

    Accepts an int (or a 1-element tuple/list, as rank policies return) in `1..max_rank`.
    `where` names the layer (module path or a description) for the error message.
    Raises `RankError` otherwise.
    """
    if isinstance(rank, (tuple, list)) and len(rank) == 1:
        rank = rank[0]
    scope = " per group" if per_group else ""
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise RankError(
            f"{where}: format {fmt!r} takes one integer rank, got {rank!r}; pass an int between "
            f"1 and {max_rank} (the max rank{scope})"
        )
    r = int(rank)
    if not 1 <= r <= max_rank:
        raise RankError(
            f"{where}: rank {r} is out of range for format {fmt!r}, whose max rank is "
            f"{max_rank}{scope}; pass a rank between 1 and {max_rank}, or keep this layer dense"
        )
    return r


def describe_linear(spec: LinearSpec) -> str:
    """Short description of a dense linear, used in messages when no module path is known."""
    return f"Linear({spec.in_features}, {spec.out_features}, bias={spec.bias})"


def _require_linear_spec(spec: DenseSpec, where: str | None) -> LinearSpec:
    if not isinstance(spec, LinearSpec):
        raise UnsupportedLayerError(
            f"{where or spec}: format 'svd' factorizes nn.Linear only, got {type(spec).__name__}; "
            "use format 'channel', 'spatial', 'tucker2' or 'cp' for convolutions"
        )
    return spec


@register_format
class LowRankLinear(FactorizedLayer):
    """`y = second(first(x))`: `Linear(in → r, no bias)` then `Linear(r → out, bias)`.

    Input `(..., in)`, output `(..., out)`. `rank` is one int in `1..min(in, out)`.
    """

    format = "svd"
    dense_type = nn.Linear

    def __init__(
        self,
        spec: LinearSpec,
        rank: int,
        *,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        spec = _require_linear_spec(spec, name)
        r = check_rank(rank, self.max_rank(spec)[0], self.format, name or describe_linear(spec))
        self.dense_spec = spec
        self._rank = r
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.first = nn.Linear(spec.in_features, r, bias=False, **kw)
        self.second = nn.Linear(r, spec.out_features, bias=spec.bias, **kw)

    # ----- construction -------------------------------------------------------------------
    @classmethod
    def from_dense(cls, layer: nn.Module, rank: Any, *, name: str | None = None) -> LowRankLinear:
        """Truncated SVD of `layer.weight (out, in)` at `rank`; same dtype/device as the weight."""
        if not isinstance(layer, nn.Linear):
            raise UnsupportedLayerError(
                f"{name or type(layer).__name__}: format 'svd' factorizes nn.Linear only, got "
                f"{type(layer).__name__}; use format 'channel' or 'spatial' for nn.Conv2d"
            )
        if isinstance(layer.weight, nn.parameter.UninitializedParameter):
            raise UnsupportedLayerError(
                f"{name or 'LazyLinear'}: weight is not initialised yet; run one forward pass "
                "before factorizing"
            )
        spec = LinearSpec.from_linear(layer)
        w = layer.weight.detach()
        out = cls(spec, rank, name=name, device=w.device, dtype=w.dtype)
        a, b = grouped_balanced_factors(w.unsqueeze(0), out._rank)
        with torch.no_grad():
            out.second.weight.copy_(a[0])
            out.first.weight.copy_(b[0])
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
    ) -> LowRankLinear:
        """Fresh layer (default `nn.Linear` init of both factors)."""
        return cls(spec, rank, name=name, device=device, dtype=dtype)  # type: ignore[arg-type]

    # ----- rank bookkeeping ---------------------------------------------------------------
    @classmethod
    def max_rank(cls, spec: DenseSpec) -> tuple[int, ...]:
        """`(min(out, in),)`."""
        spec = _require_linear_spec(spec, None)
        return (min(spec.in_features, spec.out_features),)

    @classmethod
    def spectra(cls, weight: torch.Tensor, spec: DenseSpec) -> list[torch.Tensor]:
        """`[σ]`: the singular values of `weight (out, in)`, descending, length `min(out, in)`."""
        spec = _require_linear_spec(spec, None)
        expected = (spec.out_features, spec.in_features)
        if tuple(weight.shape) != expected:
            raise UnsupportedLayerError(
                f"{describe_linear(spec)}: weight has shape {tuple(weight.shape)}, expected "
                f"{expected}; pass the weight of the layer this spec describes"
            )
        return [svdvals(weight.detach().to(svd_dtype(weight.dtype)))]

    @classmethod
    def cost(cls, spec: DenseSpec, rank: Any, input_hw: Pair | None = None) -> tuple[int, int]:
        """`(r·in + out·r + out·bias, r·in + out·r)`; `input_hw` is ignored (one token)."""
        spec = _require_linear_spec(spec, None)
        r = check_rank(rank, cls.max_rank(spec)[0], cls.format, describe_linear(spec))
        first = LinearSpec(spec.in_features, r, bias=False)
        second = LinearSpec(r, spec.out_features, bias=spec.bias)
        return (
            linear_params(first) + linear_params(second),
            linear_macs(first) + linear_macs(second),
        )

    # ----- forward / reconstruction -------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(..., in) -> (..., out)`."""
        return self.second(self.first(x))

    @property
    def bias(self) -> torch.Tensor | None:
        """The dense layer's bias `(out,)` (lives in `second`), or None."""
        return self.second.bias

    @property
    def weight(self) -> torch.Tensor:
        """The effective dense weight `U V (out, in)`, read-only, for code that reads
        `layer.weight` (e.g. attention calling `F.linear(x, proj.weight)`).

        Computed on each read (differentiable w.r.t. the factors, `out·r·in` MACs); such code runs
        the dense product and gains no speed. It is not a parameter: assigning to it raises."""
        return self.dense_weight()

    @property
    def in_features(self) -> int:
        return self.dense_spec.in_features

    @property
    def out_features(self) -> int:
        return self.dense_spec.out_features

    def dense_weight(self) -> torch.Tensor:
        """`U V`, shape `(out, in)`."""
        return self.second.weight @ self.first.weight

    def extra_repr(self) -> str:
        s = self.dense_spec
        return (
            f"{s.in_features} -> {s.out_features}, rank={self._rank} "
            f"(max {self.max_rank(s)[0]}), bias={s.bias}"
        )
