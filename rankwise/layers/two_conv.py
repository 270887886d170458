"""`TwoConvLowRank`: the shared shell of the SVD-based conv formats ("channel", "spatial").

Both replace a conv by `second(first(x))`, two grouped convs built from `factor_specs(spec, r)`,
with the dense bias in `second`; they differ only in the matricization (how the weight is cut
and put back) and in the shapes of the two sub-convs. Subclasses implement `factor_specs`,
`max_rank`, `spectra`, `per_pixel_macs`, `from_dense` and `dense_weight`.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import nn

from rankwise.errors import UnsupportedLayerError
from rankwise.layers.base import DenseSpec, FactorizedLayer
from rankwise.layers.lowrank_linear import check_rank
from rankwise.layers.shapes import ConvSpec, Pair, conv2d_macs, conv2d_output_hw, conv2d_params
from rankwise.linalg.grouped import pooled_singular_values


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


def check_conv_weight(weight: torch.Tensor, spec: ConvSpec) -> None:
    """Raise `UnsupportedLayerError` unless `weight` has the shape `(n, c/g, kh, kw)` of `spec`."""
    expected = (spec.out_channels, spec.in_channels // spec.groups, *spec.kernel_size)
    if tuple(weight.shape) != expected:
        raise UnsupportedLayerError(
            f"{describe_conv(spec)}: weight has shape {tuple(weight.shape)}, expected {expected}; "
            "pass the weight of the conv this spec describes"
        )


class TwoConvLowRank(FactorizedLayer):
    """`y = second(first(x))` with per-group rank r; input/output shapes as the dense conv."""

    dense_type = nn.Conv2d

    def __init__(self, spec: ConvSpec, rank: int, *, name: str | None = None,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        spec = require_conv_spec(spec, self.format, name)
        self.dense_spec = spec
        self._rank = self.checked_rank(spec, rank, name)
        first, second = self.factor_specs(spec, self._rank)
        self.first = first.make().to(device=device, dtype=dtype)
        self.second = second.make().to(device=device, dtype=dtype)

    @classmethod
    @abstractmethod
    def factor_specs(cls, spec: ConvSpec, rank: int) -> tuple[ConvSpec, ConvSpec]:
        """The two sub-convs at per-group `rank`."""

    @classmethod
    @abstractmethod
    def per_pixel_macs(cls, spec: ConvSpec, rank: int) -> int:
        """MACs per output pixel (TRP's counting), used when `cost` gets no input size."""

    @staticmethod
    @abstractmethod
    def matricize_groups(weight: torch.Tensor, groups: int) -> torch.Tensor:
        """`(n, c/g, kh, kw)` → `(g, p, q)`: the per-group matrices this format cuts."""

    @classmethod
    def spectra(cls, weight: torch.Tensor, spec: DenseSpec) -> list[torch.Tensor]:
        """`[s]`, `s (max_rank,)` descending: singular values of the per-group matricization.

        With groups, `s_i = sqrt(Σ_j σ_{j,i}²)` pools the groups' i-th singular values
        (`pooled_singular_values`): keeping rank r per group leaves error `sqrt(Σ_{i>r} s_i²)`.
        """
        spec = require_conv_spec(spec, cls.format, None)
        check_conv_weight(weight, spec)
        return [pooled_singular_values(cls.matricize_groups(weight.detach(), spec.groups))]

    @classmethod
    def checked_rank(cls, spec: ConvSpec, rank: Any, name: str | None = None) -> int:
        """`rank` as an int in `[1, max_rank]`, else `RankError` naming the layer."""
        return check_rank(rank, cls.max_rank(spec)[0], cls.format, name or describe_conv(spec),
                          per_group=spec.groups > 1)

    @classmethod
    def from_spec(cls, spec: DenseSpec, rank: Any, *, name: str | None = None,
                  device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> TwoConvLowRank:
        """Fresh layer (default `nn.Conv2d` init of both sub-convs)."""
        return cls(spec, rank, name=name, device=device, dtype=dtype)  # type: ignore[arg-type]

    @classmethod
    def cost(cls, spec: DenseSpec, rank: Any, input_hw: Pair | None = None) -> tuple[int, int]:
        """`(params, MACs)` of both sub-convs on the propagated shapes; `input_hw=None` gives
        MACs per output pixel (`per_pixel_macs`)."""
        spec = require_conv_spec(spec, cls.format, None)
        r = cls.checked_rank(spec, rank)
        first, second = cls.factor_specs(spec, r)
        params = conv2d_params(first) + conv2d_params(second)
        if input_hw is None:
            return params, cls.per_pixel_macs(spec, r)
        mid_hw = conv2d_output_hw(first, input_hw)
        return params, conv2d_macs(first, input_hw) + conv2d_macs(second, mid_hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, c, H, W) -> (B, n, H', W')`."""
        return self.second(self.first(x))

    @property
    def bias(self) -> torch.Tensor | None:
        """The dense conv's bias `(n,)` (lives in `second`), or None."""
        return self.second.bias

    def extra_repr(self) -> str:
        s = self.dense_spec
        return (
            f"{s.in_channels} -> {s.out_channels}, kernel_size={s.kernel_size}, "
            f"stride={s.stride}, padding={s.padding!r}, dilation={s.dilation}, "
            f"groups={s.groups}, rank={self._rank} (max {self.max_rank(s)[0]}"
            f"{' per group' if s.groups > 1 else ''}), padding_mode={s.padding_mode}"
        )
