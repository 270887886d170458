"""The contract every factorized layer implements.

A factorized layer replaces one dense `nn.Conv2d` / `nn.Linear`. It is built from a dense layer
(`from_dense`) or from a JSON spec with fresh weights (`from_spec`, used by `rankwise.load` and by
ELRT, which never builds the dense weight). `to_dense()` reconstructs the equivalent dense layer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from rankwise.layers.shapes import ConvSpec, LinearSpec, Pair

Rank = int | tuple[int, ...]
DenseSpec = ConvSpec | LinearSpec


def dense_spec_of(layer: nn.Module) -> DenseSpec:
    """The `ConvSpec` or `LinearSpec` of a dense layer."""
    if isinstance(layer, nn.Conv2d):
        return ConvSpec.from_conv(layer)
    return LinearSpec.from_linear(layer)


def dense_spec_from_dict(d: dict[str, Any]) -> DenseSpec:
    return LinearSpec.from_dict(d) if "in_features" in d else ConvSpec.from_dict(d)


class FactorizedLayer(nn.Module, ABC):
    """A low-rank replacement for one dense layer.

    Subclasses set `format` (the registry name, e.g. "tucker2") and `dense_type`
    (`nn.Conv2d` or `nn.Linear`), keep `self.dense_spec` (the replaced layer's arguments) and
    `self._rank`.
    """

    format: ClassVar[str]
    dense_type: ClassVar[type[nn.Module]]

    # TorchScript: `dense_spec` (a dataclass) and `_rank` (int or tuple) are Python-side
    # bookkeeping, never read by `forward`; the scripted module leaves them and every property
    # (`rank`, `bias`, ..., see `__init_subclass__`) out, so `torch.jit.script` compiles
    # `forward` alone.
    __jit_ignored_attributes__: ClassVar[list[str]] = ["dense_spec", "_dense_spec", "_rank"]
    __jit_unused_properties__: ClassVar[list[str]] = ["rank"]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__jit_unused_properties__ = sorted(
            {n for k in cls.__mro__ for n, v in vars(k).items() if isinstance(v, property)})

    if TYPE_CHECKING:
        _rank: Rank

    MIRRORED: ClassVar[tuple[str, ...]] = (
        "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
        "in_features", "out_features")
    """The replaced layer's public shape attributes, copied as plain attributes when the layer
    class does not define them: code around a layer (and its TorchScript, e.g. timm's
    `ConvNormAct.in_channels`) reads them."""

    @property
    def dense_spec(self) -> DenseSpec:
        """The replaced layer's constructor arguments."""
        return self._dense_spec

    @dense_spec.setter
    def dense_spec(self, spec: DenseSpec) -> None:
        self._dense_spec = spec
        for name in self.MIRRORED:
            if hasattr(spec, name) and not hasattr(type(self), name):
                setattr(self, name, getattr(spec, name))

    # ----- construction -------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def from_dense(cls, layer: nn.Module, rank: Rank, **options: Any) -> FactorizedLayer:
        """Factorize `layer` at `rank` (see `max_rank`).

        Raises `RankError` (bad rank) or `UnsupportedLayerError` (layer type/configuration).
        """

    @classmethod
    @abstractmethod
    def from_spec(cls, spec: DenseSpec, rank: Rank, **options: Any) -> FactorizedLayer:
        """A layer of the right shapes with fresh (default-initialised) factors."""

    # ----- rank bookkeeping ---------------------------------------------------------------
    @classmethod
    @abstractmethod
    def max_rank(cls, spec: DenseSpec) -> tuple[int, ...]:
        """Largest meaningful rank per rank dimension (1 entry for SVD formats, 2 for Tucker-2)."""

    @classmethod
    @abstractmethod
    def spectra(cls, weight: torch.Tensor, spec: DenseSpec) -> list[torch.Tensor]:
        """Singular values (descending, 1-D) that rank policies read, one per rank dimension."""

    @classmethod
    @abstractmethod
    def cost(cls, spec: DenseSpec, rank: Rank, input_hw: Pair | None = None) -> tuple[int, int]:
        """Exact (params, MACs per sample) of the factorized layer, without building it."""

    @property
    def rank(self) -> Rank:
        return self._rank

    # ----- reconstruction -----------------------------------------------------------------
    @abstractmethod
    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense weight, shape (n, c/groups, kh, kw) or (out, in)."""

    def to_dense(self) -> nn.Module:
        """The equivalent dense `nn.Conv2d` / `nn.Linear` (same dtype and device)."""
        dense = self.dense_spec.make()
        w = self.dense_weight()
        dense = dense.to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            dense.weight.copy_(w)
            bias = getattr(self, "bias", None)
            if dense.bias is not None and isinstance(bias, torch.Tensor):
                dense.bias.copy_(bias)
        return dense

    # ----- counting -----------------------------------------------------------------------
    def params(self) -> int:
        """Number of parameters, equal to `sum(p.numel() for p in self.parameters())`."""
        return self.cost(self.dense_spec, self._rank)[0]

    def macs(self, input_hw: Pair | None = None) -> int:
        """MACs per sample for an input of spatial size `input_hw` (ignored for linears)."""
        return self.cost(self.dense_spec, self._rank, input_hw)[1]

    # ----- serialisation ------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """JSON description from which `from_spec` rebuilds this layer's shapes."""
        rank = list(self._rank) if isinstance(self._rank, tuple) else self._rank
        return {
            "format": self.format,
            "rank": rank,
            "dense": self.dense_spec.to_dict(),
            "options": self.spec_options(),
        }

    def spec_options(self) -> dict[str, Any]:
        """Extra constructor options needed by `from_spec` (override when there are any)."""
        return {}

    def extra_repr(self) -> str:
        return f"format={self.format}, rank={self._rank}, dense={self.dense_spec}"


FORMATS: dict[str, type[FactorizedLayer]] = {}


def register_format(cls: type[FactorizedLayer]) -> type[FactorizedLayer]:
    """Class decorator adding a format to `FORMATS` under `cls.format`."""
    FORMATS[cls.format] = cls
    return cls


def layer_from_spec(d: dict[str, Any]) -> FactorizedLayer:
    """Rebuild a factorized layer (fresh weights) from `FactorizedLayer.spec()` output."""
    from rankwise.errors import CheckpointError

    try:
        cls = FORMATS[d["format"]]
        rank = d["rank"]
        rank = tuple(int(r) for r in rank) if isinstance(rank, list) else int(rank)
        return cls.from_spec(dense_spec_from_dict(d["dense"]), rank, **d.get("options", {}))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"invalid factorized-layer spec {d!r}: {e}; the spec file is corrupt or was written by "
            "an incompatible rankwise version"
        ) from e
