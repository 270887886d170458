"""Post-training robustness sweep: compress at several ratios **without retraining**, evaluate.

The compression sweep of ZIB-IOL compression-aware-SFW (code: `DecomposedConv2d`, `after_pruning`):

- `lowrank_sweep`: for each ratio `s ∈ [0, 1)`, a copy of the model has every `nn.Conv2d` (and,
  if asked, every `nn.Linear`) weight replaced by its best approximation of rank
  `r = max(1, int((1 − s) · max_rank))` in its matricization (channel `(n/g, (c/g)·kh·kw)` per
  group, or spatial); the dense shape is kept (truncated SVD + unmatricize), so stride, padding
  and everything else are unchanged. `r = max_rank` leaves the weight untouched.
- `filter_sweep`: for each ratio `s ∈ [0, 1]`, L1-norm filter pruning of the fraction `s` of
  every conv's output filters (`compress.filter_prune`, zeros kept in place).

Each row records the test accuracy/loss, `stability = 1 − (acc − acc_s) / acc` (reference
code's `pruning_stability`), `relative_norm_drop = sqrt(|‖θ‖² − ‖θ_s‖²|) / ‖θ‖` over all
parameters (reference code), `weight_error = ‖W − W_s‖_F / ‖W‖_F` over the compressed layers
(ours), and what the compressed model would cost: params and MACs per sample of the model whose
compressed layers are factorized in the `scheme` format at rank `r` (`FORMATS[scheme].cost`; a
layer whose factorization has no fewer params than the dense layer is counted dense — the
weights are truncated anyway, as in the reference) or physically shrunk to the kept filters
(`FilterPruneReport.effective_*`; the next layer's input channels are not shrunk).
Evaluation uses `rankwise.analysis.accuracy.evaluate` unless an
`evaluate_fn(model) -> {"acc", "loss"}` is given (it receives each compressed model, so callers
can also inspect it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from rankwise.compress.filter_prune import filter_prune
from rankwise.compress.prune import dense_layer_macs, layer_input_sizes
from rankwise.errors import ConfigError, UnsupportedLayerError
from rankwise.layers import FORMATS
from rankwise.layers.shapes import ConvSpec, LinearSpec
from rankwise.linalg.grouped import matricize_groups, svd_dtype, unmatricize_groups
from rankwise.linalg.spectra import ratio_rank
from rankwise.linalg.svd import low_rank_approx

SCHEMES = ("channel", "spatial")
KINDS = ("lowrank", "filters")
DEFAULT_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

Row = dict[str, Any]
EvaluateFn = Callable[[nn.Module], Mapping[str, float]]


def parse_ratios(text: str) -> tuple[float, ...]:
    """`"0.1,0.2,0.5"` → `(0.1, 0.2, 0.5)`; ConfigError on anything else."""
    try:
        ratios = tuple(float(s) for s in str(text).split(",") if s.strip())
    except ValueError as e:
        raise ConfigError(f"ratios {text!r}: expected comma-separated fractions like 0.1,0.5") \
            from e
    if not ratios:
        raise ConfigError(f"ratios {text!r}: give at least one fraction, e.g. 0,0.5,0.9")
    return ratios


def _check_ratios(ratios: Sequence[float], upper_open: bool) -> list[float]:
    out = []
    for s in ratios:
        s = float(s)
        ok = 0.0 <= s < 1.0 if upper_open else 0.0 <= s <= 1.0
        if not ok:
            bound = "[0, 1)" if upper_open else "[0, 1]"
            raise ConfigError(f"sweep ratio {s} is outside {bound}; a ratio is the fraction of "
                              "rank (low-rank) or of filters (pruning) removed per layer")
        out.append(s)
    if not out:
        raise ConfigError("the sweep needs at least one ratio")
    return out


def _default_evaluate(dataset: Any, batch_size: int, device: str | torch.device) -> EvaluateFn:
    def run(model: nn.Module) -> Mapping[str, float]:
        from rankwise.analysis.accuracy import evaluate

        return evaluate(model, dataset, batch_size, device)

    return run


def _spec_of(mod: nn.Module) -> ConvSpec | LinearSpec:
    return ConvSpec.from_conv(mod) if isinstance(mod, nn.Conv2d) else LinearSpec.from_linear(mod)


def lowrank_targets(model: nn.Module, include_linear: bool = False) -> list[tuple[str, nn.Module]]:
    """`(name, module)` of every `nn.Conv2d` (and `nn.Linear` if `include_linear`), model order."""
    types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear) if include_linear else (nn.Conv2d,)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, types)]


def layer_rank_plan(mod: nn.Module, ratio: float, scheme: str = "channel") -> tuple[str, int, int]:
    """`(format, max_rank, rank)` of one conv/linear at sweep ratio `ratio` (rank per group)."""
    spec = _spec_of(mod)
    fmt = scheme if isinstance(mod, nn.Conv2d) else "svd"
    max_rank = FORMATS[fmt].max_rank(spec)[0]
    return fmt, max_rank, ratio_rank(max_rank, 1.0 - ratio)


@torch.no_grad()
def truncate_model(
    model: nn.Module, ratio: float, scheme: str = "channel", include_linear: bool = False,
    input_sizes: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[nn.Module, list[Row]]:
    """A deep copy of `model` with every target weight cut to rank `max(1, int((1−s)·max_rank))`.

    Returns `(copy, layers)`; each layer row: `name, format, max_rank, rank, factorized` (whether
    the factorized layer has fewer params than the dense one), `dense_params, params,
    dense_macs, macs` (MACs per sample; 0 when `input_sizes` lacks the layer), `sq_error`
    (`‖W − W_s‖_F²`) and `sq_norm` (`‖W‖_F²`).
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"sweep scheme {scheme!r} unknown; use one of {SCHEMES}")
    (ratio,) = _check_ratios([ratio], upper_open=True)
    out = copy.deepcopy(model)
    targets = lowrank_targets(out, include_linear)
    if not targets:
        raise UnsupportedLayerError(
            f"{type(model).__name__} has no nn.Conv2d{' / nn.Linear' if include_linear else ''} "
            "to truncate; the low-rank sweep needs conv (or, with include_linear, linear) layers")
    sizes = dict(input_sizes or {})
    rows: list[Row] = []
    for name, mod in targets:
        spec = _spec_of(mod)
        fmt, max_rank, rank = layer_rank_plan(mod, ratio, scheme)
        w = mod.weight
        groups = int(getattr(mod, "groups", 1))
        sq_norm = float(w.detach().double().square().sum())
        sq_error = 0.0
        if rank < max_rank:
            mats = matricize_groups(w.detach(), scheme, groups).to(svd_dtype(w.dtype))
            low = unmatricize_groups(low_rank_approx(mats, rank), scheme, w.shape).to(w.dtype)
            sq_error = float((low.double() - w.double()).square().sum())
            w.copy_(low)
        size = sizes.get(name)
        dense_params = w.numel() + (mod.bias.numel() if mod.bias is not None else 0)
        fact_params, fact_unit = FORMATS[fmt].cost(spec, rank, None)
        dense_macs = dense_layer_macs(mod, size) if size is not None else 0
        if size is None:
            fact_macs = 0
        elif isinstance(mod, nn.Conv2d):
            fact_macs = FORMATS[fmt].cost(spec, rank, (size[0], size[1]))[1]
        else:
            fact_macs = fact_unit * size[0]
        factorized = fact_params < dense_params
        rows.append({
            "name": name, "format": fmt, "max_rank": max_rank, "rank": rank,
            "factorized": factorized, "dense_params": dense_params,
            "params": fact_params if factorized else dense_params, "dense_macs": dense_macs,
            "macs": fact_macs if factorized else dense_macs, "sq_error": sq_error,
            "sq_norm": sq_norm})
    return out, rows


def _sq_norm(model: nn.Module) -> float:
    return float(sum(p.detach().double().square().sum() for p in model.parameters()))


def _model_cost(model: nn.Module, sizes: Mapping[str, tuple[int, ...]]) -> tuple[int, int]:
    """Dense params (each shared tensor once) and MACs per sample of every conv/linear reached."""
    params = sum(p.numel() for p in model.parameters())
    macs = 0
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and name in sizes:
            macs += dense_layer_macs(mod, sizes[name])
    return params, macs


def _row(ratio: float, base: Mapping[str, float], result: Mapping[str, float], params: int,
         macs: int, dense: tuple[int, int], base_sq: float, new_sq: float, err_sq: float,
         ref_sq: float) -> Row:
    acc0, acc = float(base["acc"]), float(result["acc"])
    stability = 1.0 - (acc0 - acc) / acc0 if acc0 > 0 else None
    norm0 = math.sqrt(base_sq)
    return {
        "ratio": ratio, "acc": acc, "loss": float(result.get("loss", float("nan"))),
        "acc_dense": acc0, "stability": stability,
        "relative_norm_drop": math.sqrt(abs(base_sq - new_sq)) / norm0 if norm0 > 0 else None,
        "weight_error": math.sqrt(err_sq / ref_sq) if ref_sq > 0 else 0.0,
        "params": params, "macs": macs, "params_dense": dense[0], "macs_dense": dense[1],
        "compression": dense[0] / params if params else None,
        "speedup": dense[1] / macs if macs else None,
    }


def _baseline(model: nn.Module, dataset: Any, input_shape: Sequence[int] | None,
              batch_size: int, device: str | torch.device, evaluate_fn: EvaluateFn | None,
              example_inputs: Any = None):
    """What every sweep starts from: input shape (None with `example_inputs`), evaluator,
    per-layer input sizes, the dense (params, MACs), the unmodified model's metrics and its
    squared weight norm."""
    shape = tuple(input_shape) if input_shape is not None else \
        None if example_inputs is not None else tuple(dataset.shape)
    evaluate = evaluate_fn or _default_evaluate(dataset, batch_size, device)
    sizes = layer_input_sizes(model, shape, example_inputs)
    return shape, evaluate, sizes, _model_cost(model, sizes), evaluate(model), _sq_norm(model)


def lowrank_sweep(
    model: nn.Module, dataset: Any, ratios: Sequence[float] = DEFAULT_RATIOS,
    scheme: str = "channel", input_shape: Sequence[int] | None = None, batch_size: int = 512,
    device: str | torch.device = "cpu", include_linear: bool = False,
    evaluate_fn: EvaluateFn | None = None, example_inputs: Any = None,
) -> list[Row]:
    """SVD-truncate every conv (and linear) at each ratio, evaluate without retraining.

    `dataset`: an `ImageDataset` (its `shape` is the default `input_shape` (C, H, W)); a model
    that takes other inputs (token ids, keyword tensors) gives `example_inputs` (one batch as
    it takes it, for the MACs) and `evaluate_fn(model) -> {"acc", ...}`. `model` is not
    modified and should be on `device`. Returns one row per ratio, in the given order:
    `ratio, acc, loss, acc_dense, stability, relative_norm_drop, weight_error, params, macs,
    params_dense, macs_dense, compression, speedup, factorized_layers, layers` (per layer:
    `name, format, max_rank, rank, factorized, dense_params, params, dense_macs, macs`).
    """
    ratios = _check_ratios(ratios, upper_open=True)
    _, evaluate, sizes, dense, base, base_sq = _baseline(
        model, dataset, input_shape, batch_size, device, evaluate_fn, example_inputs)
    rows = []
    for s in ratios:
        cut, layers = truncate_model(model, s, scheme, include_linear, sizes)
        params = dense[0] - sum(r["dense_params"] - r["params"] for r in layers)
        macs = dense[1] - sum(r["dense_macs"] - r["macs"] for r in layers)
        row = _row(s, base, evaluate(cut), params, macs, dense, base_sq, _sq_norm(cut),
                   sum(r["sq_error"] for r in layers), sum(r["sq_norm"] for r in layers))
        row["factorized_layers"] = sum(1 for r in layers if r["factorized"])
        row["layers"] = [{k: v for k, v in r.items() if k not in ("sq_error", "sq_norm")}
                         for r in layers]
        rows.append(row)
        del cut
    return rows


def filter_sweep(
    model: nn.Module, dataset: Any, ratios: Sequence[float] = DEFAULT_RATIOS,
    input_shape: Sequence[int] | None = None, batch_size: int = 512,
    device: str | torch.device = "cpu", norm: int = 1, evaluate_fn: EvaluateFn | None = None,
    example_inputs: Any = None,
) -> list[Row]:
    """L1-norm (or L2, `norm=2`) filter pruning of the fraction `s` of every conv's filters.

    Same row keys as `lowrank_sweep` (`factorized_layers` → `pruned_filters`, the total count);
    `layers` holds `name, filters, pruned_filters, params, effective_params, macs,
    effective_macs` per conv.
    """
    ratios = _check_ratios(ratios, upper_open=False)
    shape, evaluate, sizes, dense, base, base_sq = _baseline(
        model, dataset, input_shape, batch_size, device, evaluate_fn, example_inputs)
    rows = []
    for s in ratios:
        pruned, rep = filter_prune(model, s, norm=norm, input_shape=shape,
                                   example_inputs=example_inputs)
        names = {r.name for r in rep.rows}
        err_sq = ref_sq = 0.0
        mods = dict(pruned.named_modules())
        for name, mod in model.named_modules():
            if name in names:
                w, ws = mod.weight.detach().double(), mods[name].weight.detach().double()
                err_sq += float((w - ws).square().sum())
                ref_sq += float(w.square().sum())
        params = dense[0] - rep.params + rep.effective_params
        macs = dense[1] - rep.macs + rep.effective_macs
        row = _row(s, base, evaluate(pruned), params, macs, dense, base_sq, _sq_norm(pruned),
                   err_sq, ref_sq)
        row["pruned_filters"] = sum(r.pruned_filters for r in rep.rows)
        row["layers"] = [{"name": r.name, "filters": r.filters, "pruned_filters":
                          r.pruned_filters, "params": r.params,
                          "effective_params": r.effective_params, "macs": r.macs,
                          "effective_macs": r.effective_macs} for r in rep.rows]
        rows.append(row)
        del pruned
    return rows


__all__ = ["DEFAULT_RATIOS", "KINDS", "SCHEMES", "filter_sweep", "layer_rank_plan",
           "lowrank_sweep", "lowrank_targets", "parse_ratios", "truncate_model"]
