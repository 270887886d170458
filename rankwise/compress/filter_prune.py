"""Structured filter pruning: zero whole output filters with the smallest L1/L2 norm, per layer.

Each selected layer loses `k = round(s * out_channels)` filters (ties to even, as
`torch.nn.utils.prune.ln_structured` does): the ones whose weight slice `W[i]` (shape
(c/groups, kh, kw) for a conv, (in,) for a linear) has the smallest Ln norm. Shapes are kept — the
filters become stored zeros (and by default their bias entries too, so the output channel is exactly
0 before any following BatchNorm). The report gives the *effective* params/MACs, i.e. what a
physically shrunk layer would cost; nothing here changes the next layer's input channels.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from rankwise.compress.prune import (
    SparsityRow,
    _check_amount,
    dense_layer_macs,
    layer_input_sizes,
    prunable_layers,
)
from rankwise.errors import ConfigError, UnsupportedLayerError


@dataclass(frozen=True)
class FilterPruneRow(SparsityRow):
    """One layer: `SparsityRow`'s weight counts plus filters and effective costs. `params` /
    `effective_params` include the bias; MACs are per sample, 0 if the layer was not reached by
    the forward pass used for counting (or no `input_shape` was given)."""

    filters: int = 0
    pruned_filters: int = 0
    params: int = 0
    effective_params: int = 0
    macs: int = 0
    effective_macs: int = 0


@dataclass
class FilterPruneReport:
    """Rows in model order; totals over the pruned layers only."""

    rows: list[FilterPruneRow] = field(default_factory=list)
    amount: float = 0.0
    norm: int = 1

    def _sum(self, key: str) -> int:
        return sum(getattr(r, key) for r in self.rows)

    @property
    def params(self) -> int:
        return self._sum("params")

    @property
    def effective_params(self) -> int:
        return self._sum("effective_params")

    @property
    def macs(self) -> int:
        return self._sum("macs")

    @property
    def effective_macs(self) -> int:
        return self._sum("effective_macs")

    def to_dict(self) -> dict[str, Any]:
        return {
            "amount": self.amount,
            "norm": self.norm,
            "params": self.params,
            "effective_params": self.effective_params,
            "macs": self.macs,
            "effective_macs": self.effective_macs,
            "layers": [r.to_dict() for r in self.rows],
        }


def filter_norms(weight: torch.Tensor, norm: int = 1) -> torch.Tensor:
    """Ln norm of each output filter: weight (n, ...) -> (n,)."""
    return torch.linalg.vector_norm(weight.detach().flatten(1), ord=norm, dim=1)


def filter_prune(
    model: nn.Module,
    amount: float,
    norm: int = 1,
    input_shape: tuple[int, ...] | None = None,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    types: tuple[type[nn.Module], ...] = (nn.Conv2d,),
    zero_bias: bool = True,
    inplace: bool = False,
    example_inputs: Any = None,
) -> tuple[nn.Module, FilterPruneReport]:
    """Zero the fraction `amount` of output filters with the smallest Ln norm in each layer.

    Args:
        amount: fraction in [0, 1] of each layer's filters to zero.
        norm: 1 (L1) or 2 (L2) filter norm.
        input_shape: one sample's shape, e.g. (3, 32, 32), to fill in MACs (optional);
            `example_inputs` (inputs as the model takes them) does the same for other inputs.
        types: layer types to prune; convs only by default (pruning the classifier's output rows
            would delete classes). Factorized layers' sub-convs are plain `nn.Conv2d` and are
            pruned too, which lowers their rank channels.
        zero_bias: also zero the bias entries of the pruned filters.
    Returns `(model, report)`; the model is a deep copy unless `inplace`.
    """
    _check_amount(amount)
    if norm not in (1, 2):
        raise ConfigError(f"filter norm must be 1 or 2, got {norm}")
    if not inplace:
        model = copy.deepcopy(model)
    layers = prunable_layers(model, include, exclude, types=types)
    if not layers:
        raise UnsupportedLayerError(
            f"no layer of type {[t.__name__ for t in types]} matched include/exclude; "
            "nothing to prune — check the patterns against model.named_modules()"
        )
    sizes = layer_input_sizes(model, input_shape, example_inputs) \
        if input_shape is not None or example_inputs is not None else {}
    rows = []
    for name, mod in layers:
        prune.ln_structured(mod, "weight", amount=float(amount), n=norm, dim=0)
        keep = mod.weight_mask.flatten(1).any(dim=1)  # (n,) True for kept filters
        prune.remove(mod, "weight")
        w = mod.weight.detach()
        if zero_bias and mod.bias is not None:
            with torch.no_grad():
                mod.bias[~keep] = 0
        n = w.shape[0]
        kept = int(keep.sum())
        per_filter = w[0].numel()
        bias_n = n if mod.bias is not None else 0
        macs = dense_layer_macs(mod, sizes[name]) if name in sizes else 0
        rows.append(
            FilterPruneRow(
                name=name,
                filters=n,
                pruned_filters=n - kept,
                total=w.numel(),
                zeros=int((w == 0).sum()),
                params=w.numel() + bias_n,
                effective_params=kept * per_filter + (kept if bias_n else 0),
                macs=macs,
                effective_macs=macs * kept // n if n else 0,
            )
        )
    return model, FilterPruneReport(rows, float(amount), norm)
