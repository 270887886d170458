"""Unstructured magnitude pruning of conv/linear weights, sparsity reports and per-stage stats.

Pruning acts on the `weight` of every `nn.Conv2d` / `nn.Linear` in the model, including the plain
sub-convs / sub-linears inside factorized layers (their parameters are ordinary children). Masks
come from `torch.nn.utils.prune` and are made permanent with `prune.remove`, so the returned model
has a plain state dict (pruned entries are stored zeros; nothing runs sparse).

Rounding: for a tensor (or, in global scope, a pool) of `n` weights and a fraction `s`, exactly
`k = round(s * n)` entries are zeroed (Python `round`, ties to even, as `torch.nn.utils.prune`
does). They are the `k` smallest-magnitude entries; among equal magnitudes the choice is arbitrary.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import prune

from rankwise.errors import ConfigError, UnsupportedLayerError
from rankwise.layers.base import FactorizedLayer
from rankwise.layers.shapes import ConvSpec, LinearSpec, conv2d_macs, linear_macs

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class SparsityRow:
    """One weight tensor: `total` entries, `zeros` of them exactly 0, `fraction = zeros/total`."""

    name: str
    total: int
    zeros: int

    @property
    def fraction(self) -> float:
        return self.zeros / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fraction": self.fraction}


@dataclass
class PruneReport:
    """Per-layer sparsity of conv/linear weights after a pruning step (`rows` in model order)."""

    rows: list[SparsityRow] = field(default_factory=list)
    amount: float | None = None
    scope: str | None = None

    @property
    def total(self) -> int:
        return sum(r.total for r in self.rows)

    @property
    def zeros(self) -> int:
        return sum(r.zeros for r in self.rows)

    @property
    def fraction(self) -> float:
        return self.zeros / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "amount": self.amount,
            "scope": self.scope,
            "total": self.total,
            "zeros": self.zeros,
            "fraction": self.fraction,
            "layers": [r.to_dict() for r in self.rows],
        }


def _matches(name: str, patterns: Iterable[str] | None) -> bool:
    return patterns is not None and any(fnmatch.fnmatchcase(name, p) for p in patterns)


def prunable_layers(
    model: nn.Module,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    types: tuple[type[nn.Module], ...] = PRUNABLE_TYPES,
) -> list[tuple[str, nn.Module]]:
    """`(module path, module)` of every layer of `types` in `model`, in `named_modules` order.

    `include` / `exclude` are fnmatch patterns on the module path (e.g. `"layer1.*"`, `"fc"`);
    `include=None` means all.
    """
    include = list(include) if include is not None else None
    exclude = list(exclude) if exclude is not None else None
    out = []
    for name, mod in model.named_modules():
        if not isinstance(mod, types) or not isinstance(getattr(mod, "weight", None), torch.Tensor):
            continue
        if include is not None and not _matches(name, include):
            continue
        if _matches(name, exclude):
            continue
        out.append((name, mod))
    return out


def _check_amount(amount: float) -> None:
    if not 0.0 <= float(amount) <= 1.0:
        raise ConfigError(f"pruning amount must lie in [0, 1], got {amount}; pass a fraction")


def sparsity_report(
    model: nn.Module,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> PruneReport:
    """Zeros per conv/linear weight of `model` (no change to the model)."""
    rows = [
        SparsityRow(f"{n}.weight" if n else "weight", m.weight.numel(),
                    int((m.weight.detach() == 0).sum()))
        for n, m in prunable_layers(model, include, exclude)
    ]
    return PruneReport(rows)


def magnitude_prune(
    model: nn.Module,
    amount: float,
    scope: Literal["global", "layer"] = "global",
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, PruneReport]:
    """Zero the smallest-magnitude fraction `amount` of conv/linear weights.

    scope="layer": each weight tensor loses `round(amount * numel)` entries.
    scope="global": the `round(amount * N)` smallest |w| over all selected tensors together
    (N = their total size), so layers end up with different sparsities.
    Already-zero entries count as the smallest, so pruning a pruned model to a higher `amount`
    tops it up. Biases are never pruned. Returns `(model, report)`; the model is a deep copy
    unless `inplace`.
    """
    _check_amount(amount)
    if scope not in ("global", "layer"):
        raise ConfigError(f"pruning scope must be 'global' or 'layer', got {scope!r}")
    if not inplace:
        model = copy.deepcopy(model)
    layers = prunable_layers(model, include, exclude)
    if not layers:
        raise UnsupportedLayerError(
            "no nn.Conv2d / nn.Linear weight matched include/exclude; nothing to prune — "
            "check the patterns against model.named_modules()"
        )
    if scope == "layer":
        for _, mod in layers:
            prune.l1_unstructured(mod, "weight", amount=float(amount))
    else:
        prune.global_unstructured(
            [(m, "weight") for _, m in layers],
            pruning_method=prune.L1Unstructured,
            amount=float(amount),
        )
    for _, mod in layers:
        prune.remove(mod, "weight")
    report = sparsity_report(model, include, exclude)
    report.amount, report.scope = float(amount), scope
    return model, report


# --------------------------------------------------------------------------------------------
# What each stage buys: parameter, MAC and byte counts.
# --------------------------------------------------------------------------------------------


def layer_input_sizes(
    model: nn.Module, input_shape: tuple[int, ...] | None, example_inputs: Any = None
) -> dict[str, tuple[int, ...]]:
    """Input size seen by each conv/linear/factorized layer for one sample of `input_shape`, or
    of `example_inputs` (inputs as the model takes them: token ids, keyword tensors, ...).

    Runs one forward pass (batch 1 of zeros, or the example; `eval()` mode, no grad) and
    restores the training flags. Values: `(H, W)` for convs and factorized layers fed 4-D input,
    `(tokens,)` for linears (`tokens = input numel / batch / in_features`). Layers not reached
    by the forward pass are absent.
    """
    sizes: dict[str, tuple[int, ...]] = {}
    handles = []

    def hook_for(name: str):
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if isinstance(mod, nn.Linear):
                sizes[name] = (x.numel() // x.shape[0] // mod.in_features,)
            elif x.dim() == 4:
                sizes[name] = (int(x.shape[-2]), int(x.shape[-1]))
            else:
                sizes[name] = (1,)

        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, (*PRUNABLE_TYPES, FactorizedLayer)):
            handles.append(mod.register_forward_pre_hook(hook_for(name)))
    modes = {m: m.training for m in model.modules()}
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    try:
        model.eval()
        with torch.no_grad():
            if example_inputs is not None:
                from rankwise.surgery.trace import as_example, example_on

                args, kwargs = example_on(as_example(example_inputs, None, model), device)
                model(*args, **kwargs)
            else:
                model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        for m, t in modes.items():
            m.train(t)
    return sizes


def dense_layer_macs(mod: nn.Module, size: tuple[int, ...]) -> int:
    """Dense MACs per sample of one conv/linear given its `layer_input_sizes` entry."""
    if isinstance(mod, nn.Conv2d):
        return conv2d_macs(ConvSpec.from_conv(mod), (size[0], size[1]))
    return linear_macs(LinearSpec.from_linear(mod), tokens=size[0])


def stage_stats(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int | float]:
    """Size and cost of `model` as it stands after a compression stage.

    Args:
        model: any module; conv/linear layers (factorized layers' children included) are counted.
        input_shape: one sample's shape without batch, e.g. (3, 32, 32).

    Returns a dict:
        params, nonzero_params: all parameters / those not exactly zero.
        weight_params, nonzero_weight_params: the same over conv/linear weights only.
        macs: dense MACs per sample (`rankwise.layers.shapes`, bias excluded) of every conv/linear
            reached by the forward pass, plus `layer.macs()` of factorized layers that have no
            conv/linear children (their cost is not attributable per weight).
        nonzero_macs: MACs when multiplications by zero weights are skipped (each conv weight is
            used once per output pixel, each linear weight once per token).
        sparsity: 1 - nonzero_weight_params / weight_params.
        bytes_fp32: params * 4.
        bytes_int8: conv/linear weights at 1 byte + one float32 scale per output channel + every
            other parameter at 4 bytes (what `compress.quantize.quantize_model` stores, buffers
            such as BatchNorm running stats excluded).
    """
    sizes = layer_input_sizes(model, input_shape)
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(p.detach().count_nonzero()) for p in model.parameters())
    w_params = w_nonzero = macs = nz_macs = scale_count = 0
    covered: set[str] = set()
    for name, mod in prunable_layers(model):
        w = mod.weight.detach()
        n, nz = w.numel(), int(w.count_nonzero())
        w_params, w_nonzero = w_params + n, w_nonzero + nz
        scale_count += w.shape[0]
        covered.add(name)
        if name in sizes:
            dense = dense_layer_macs(mod, sizes[name])
            macs += dense
            nz_macs += dense * nz // n if n else 0
    for name, mod in model.named_modules():
        if isinstance(mod, FactorizedLayer) and name in sizes:
            prefix = f"{name}." if name else ""
            if not any(c == name or c.startswith(prefix) for c in covered if c):
                hw = sizes[name] if len(sizes[name]) == 2 else None
                m = int(mod.macs(hw))
                macs += m
                nz_macs += m
    return {
        "params": params,
        "nonzero_params": nonzero,
        "weight_params": w_params,
        "nonzero_weight_params": w_nonzero,
        "macs": macs,
        "nonzero_macs": nz_macs,
        "sparsity": 1.0 - w_nonzero / w_params if w_params else 0.0,
        "bytes_fp32": 4 * params,
        "bytes_int8": w_params + 4 * scale_count + 4 * (params - w_params),
    }
