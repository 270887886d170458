"""Model surgery: `decompose()` rewrites conv/linear layers into factorized layers.

This module decides *how* to rewrite (which layers, which format, replacing modules in place);
*how much* to keep is the rank policy's job (`rankwise.surgery.rank`), resolved for all layers by
`rankwise.surgery.allocate.allocate` (per-layer policies and global params/MACs budgets).

Layer → format: every `nn.Conv2d` gets `format`, every `nn.Linear` gets `linear_format`, except
1×1 convs, which are matrices and always get `"channel"` (a truncated SVD of the `(n, c)` weight)
whatever the conv format. `format` may name a linear format (`"svd"`, `"tt"`): then linears use
it and convs use `"channel"`. `None` leaves that layer type dense. Hugging Face `Conv1D` and
`nn.MultiheadAttention` projections are linears too (`rankwise.layers.foreign`); layers that
must stay dense (custom forward, tied weights, ...) are listed with the reason
(`rankwise.surgery.candidates`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from rankwise.errors import ConfigError, UnsupportedLayerError
from rankwise.layers import FORMATS, foreign
from rankwise.layers.base import FactorizedLayer, dense_spec_of
from rankwise.layers.foreign import param_owners, tied_to
from rankwise.layers.mha import ProjectedMultiheadAttention
from rankwise.surgery.allocate import allocate, as_rank, budget_metric
from rankwise.surgery.apply import apply, row
from rankwise.surgery.candidates import (
    Candidate,
    Filter,
    check_include,
    check_weights,
    is_candidate_type,
    keep_dense_reason,
    matches,
)
from rankwise.surgery.latency_budget import LatencyBudget, latency_plan
from rankwise.surgery.rank import Energy, parse_rank
from rankwise.surgery.report import DecomposeReport, LayerRow
from rankwise.surgery.trace import as_example, counted_layers, model_macs, trace

DEFAULT_RANK = Energy(0.9)  # frozen dataclass: safe as a default

__all__ = ["DecomposeReport", "LayerRow", "decompose", "matches", "reconstruct", "to_dense"]

Progress = Callable[[str, int, int], None]


def _formats(format: str | None, linear_format: str | None) -> tuple[str | None, str | None]:
    for f in (format, linear_format):
        if f is not None and f not in FORMATS:
            raise ConfigError(f"unknown format {f!r}; available: {sorted(FORMATS)}")
    if format is not None and FORMATS[format].dense_type is nn.Linear:
        return "channel", format
    if linear_format is not None and FORMATS[linear_format].dense_type is not nn.Linear:
        raise ConfigError(f"linear_format={linear_format!r} is a conv format; use 'svd' or 'tt'")
    return format, linear_format


def _check_format_options(options: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    out = dict(options or {})
    for k, v in out.items():
        if k not in FORMATS or not isinstance(v, Mapping):
            raise ConfigError(f"format_options must map a format name ({sorted(FORMATS)}) to a "
                              f"dict of from_dense options, e.g. {{'cp': {{'n_iter_max': 50}}}}; "
                              f"got key {k!r}")
    return {k: dict(v) for k, v in out.items()}


def _weight_layer(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() >= 2 and not any(True for _ in m.children())


def _dense_row(name: str, mod: nn.Module, note: str) -> LayerRow:
    w = next((p for p in mod.parameters() if p.dim() >= 2), None)
    shape = tuple(w.shape) if w is not None else ()
    n = sum(p.numel() for p in mod.parameters())
    return LayerRow(name, type(mod).__name__, shape, None, None, n, n, None, None, note)


def _select(model: nn.Module, conv_fmt: str | None, lin_fmt: str | None, include: Filter,
            exclude: Filter, containers: dict[str, nn.Module], conv1d: frozenset[str] = frozenset()
            ) -> tuple[list[Candidate], list[LayerRow]]:
    """Candidates, and report rows for matched layers that must stay dense."""
    out: list[Candidate] = []
    rows: list[LayerRow] = []
    owners = param_owners(model)
    skip: list[str] = []
    for name, mod in model.named_modules():
        if not name or any(name.startswith(p) for p in skip):
            continue
        if isinstance(mod, (FactorizedLayer, nn.MultiheadAttention)):
            skip.append(name + ".")
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        names = [name] + ([parent] if parent in containers else [])
        explicit = include is not None and any(matches(n, mod, include) for n in names)
        if (include is not None and not explicit) or any(matches(n, mod, exclude) for n in names):
            continue
        if isinstance(mod, FactorizedLayer) or name in containers:
            continue  # already factorized (to_dense(model) first to re-decompose) / a container
        if is_candidate_type(mod):
            is_conv = isinstance(mod, nn.Conv2d)
            fmt = conv_fmt if is_conv else lin_fmt
            if fmt is None:
                continue
            note = ("projection of nn.MultiheadAttention" if parent in containers else
                    "HF Conv1D as nn.Linear (weight transposed)" if name in conv1d else "")
            if is_conv and tuple(mod.kernel_size) == (1, 1) and fmt != "channel":
                fmt, note = "channel", "1×1 conv: channel format (a matrix SVD)"
            c = Candidate(name, mod, fmt, explicit, note)
            why = keep_dense_reason(mod, tied_to(mod, owners))
            if why is not None:
                rows.append(row(c, None, None, why))
                continue
            out.append(c)
        elif explicit and _weight_layer(mod):
            raise UnsupportedLayerError(
                f"{name} is a {type(mod).__name__}, which rankwise cannot factorize (only "
                "nn.Conv2d, nn.Linear, HF Conv1D and nn.MultiheadAttention); narrow "
                "--include/include= so it does not match it")
    return out, rows


def decompose(model: nn.Module, format: str | None = "tucker2", rank: Any = DEFAULT_RANK,
              include: Filter = None, exclude: Filter = None, inplace: bool = False,
              input_shape: Sequence[int] | None = None, skip_first_conv: bool = False,
              linear_format: str | None = "svd", min_saving: float = 0.0,
              example_inputs: Any = None, format_options: Mapping[str, Any] | None = None,
              progress: Progress | None = None) -> tuple[nn.Module, DecomposeReport]:
    """Replace conv/linear layers of `model` by factorized layers.

    `rank`: a policy object from `rankwise.surgery.rank`, a string for `parse_rank`
    (`"energy:0.9"`, `"budget:params=0.3"`), or an int / tuple used for every layer.
    `include` / `exclude`: glob or regex strings, compiled patterns, or `f(name, module)`; an
    `include` pattern matching no module is refused; with `include`, only matching layers are
    candidates and a matching non-conv/linear weight layer raises `UnsupportedLayerError`.
    `example_inputs` (as `torch.export`: a tuple of args or `(args, kwargs)`) is run once to
    record each layer's input size (MACs); without it no forward pass runs, MACs are unknown and
    a MACs budget is refused. `input_shape` (deprecated) means `example_inputs=(zeros(1,
    *input_shape),)`. `format_options`: `{format: from_dense options}` (e.g. `{"cp":
    {"n_iter_max": 50, "callback": f}}`); `progress(name, i, n)` is called before each layer.
    A layer stays dense unless its factorization is below `(1 - min_saving)` of the dense params
    and MACs (under a global budget: of the budget's metric only). Frozen parameters stay frozen
    and forward hooks move to the new layer (noted in the report).
    Returns the (copied unless `inplace`) model and a `DecomposeReport`.
    """
    if not 0.0 <= min_saving < 1.0:
        raise ConfigError(f"min_saving={min_saving} must be in [0, 1)")
    policy = parse_rank(rank) if isinstance(rank, str) else rank
    conv_fmt, lin_fmt = _formats(format, linear_format)
    options = _check_format_options(format_options)
    meta = next((n for n, p in model.named_parameters() if p.is_meta), None)
    if meta is not None:
        raise ConfigError(f"{meta} is on the meta device (no values to factorize); materialize "
                          "the weights first (model.to_empty(device=...) + load_state_dict)")
    if not inplace:
        model = copy.deepcopy(model)
    conversions, foreign_notes = foreign.convert(model)
    try:
        containers = {c.name: c.converted for c in conversions
                      if isinstance(c.converted, ProjectedMultiheadAttention)}
        check_include(model, include)
        conv1d = frozenset(c.name for c in conversions if c.name not in containers)
        cands, rows = _select(model, conv_fmt, lin_fmt, include, exclude, containers, conv1d)
        for name, note in foreign_notes.items():
            mod = model.get_submodule(name)
            if (include is None or matches(name, mod, include)) and not matches(name, mod, exclude):
                rows.append(_dense_row(name, mod, note))
        check_weights(cands)
        params_before = sum(p.numel() for p in model.parameters())
        example = as_example(example_inputs, input_shape, model)
        metric = budget_metric(policy)
        macs_before: int | None = None
        order = [n for n, _ in model.named_modules()]
        if example is not None:
            seen = trace(model, example, {**counted_layers(model), **{c.name: c.module
                                                                       for c in cands}})
            macs_before = model_macs(model, seen)
            order = list(seen)
            called = []
            for c in cands:
                c.in_shape = seen.get(c.name)
                if c.in_shape is None:
                    rows.append(row(c, None, None, "kept dense: not called in the forward pass on "
                                     "the example inputs (its weight is read directly, e.g. by "
                                     "functional attention, or it is unused)"))
                else:
                    called.append(c)
            cands = called
        elif metric == "macs":
            raise ConfigError("a MACs budget needs a forward pass: pass example_inputs=(x,) "
                              "with an input the model accepts (or input_shape=)")
        if skip_first_conv:  # the model's first conv in execution order, even if not a candidate
            first = next((n for n in order if isinstance(model.get_submodule(n), nn.Conv2d)
                          and not foreign._inside_factorized(model, n)), None)
            rows += [row(c, None, None, "kept dense: first conv (skip_first_conv)")
                     for c in cands if c.name == first]
            cands = [c for c in cands if c.name != first]

        usable: list[Candidate] = []
        for c in cands:
            cls, spec = FORMATS[c.fmt], dense_spec_of(c.module)
            try:
                c.max_rank = tuple(int(x) for x in cls.max_rank(spec))
                if getattr(policy, "needs_spectra", True):
                    with torch.no_grad():
                        c.spectra = list(cls.spectra(c.module.weight.detach(), spec))
            except UnsupportedLayerError as e:
                if c.explicit:
                    raise UnsupportedLayerError(f"{c.name}: {e}") from e
                rows.append(row(c, None, None, f"kept dense: {c.fmt} does not support it ({e})"))
                continue
            usable.append(c)

        if metric == "latency":
            ranks = _latency_ranks(model, usable, policy, example)
        else:
            ranks = allocate(policy, usable, params_before, macs_before)
        index = foreign.parent_index(model)
        for i, c in enumerate(usable):
            if progress is not None:
                progress(c.name, i, len(usable))
            r = ranks[c.name]
            if r is None:
                rows.append(row(c, None, None, f"kept dense: the {metric} budget allocator "
                                                "found no rank that saves enough"))
            else:
                rows.append(apply(model, c, as_rank(c.fmt, r), min_saving, metric, policy,
                                   options.get(c.fmt, {}), index))
        order_index = {n: i for i, n in enumerate(n for n, _ in model.named_modules())}
        for conv in foreign.restore(model, conversions, index):  # a factorized HF Conv1D
            if not isinstance(conv.converted, ProjectedMultiheadAttention):
                object.__setattr__(model.get_submodule(conv.name), foreign.FROM_CONV1D,
                                   type(conv.original))
        rows.sort(key=lambda row: order_index.get(row.name, len(order_index)))
        params_after = sum(p.numel() for p in model.parameters())
        macs_after = None
        if macs_before is not None:
            macs_after = macs_before + sum((row.macs_after or 0) - (row.macs_before or 0)
                                           for row in rows if row.format is not None)
        report = DecomposeReport(
            rows, format=format, linear_format=linear_format, policy=str(policy),
            model_params_before=params_before, model_params_after=params_after,
            model_macs_before=macs_before, model_macs_after=macs_after)
    except BaseException:
        foreign.restore(model, conversions)  # no converted module left behind (inplace)
        raise
    _check_budget_met(policy, metric, report)
    return model, report


def _latency_ranks(model: nn.Module, usable: list[Candidate], policy: LatencyBudget,
                   example: Any) -> dict[str, tuple[int, ...] | None]:
    """Per-layer (format, rank) from the measured-latency allocator; each chosen layer's
    candidate takes the format the allocator picked (channel / spatial / Tucker-2 for a conv,
    svd for a linear)."""
    if example is None:
        raise ConfigError("a latency budget times each layer at the input it sees: pass "
                          "example_inputs=(torch.randn(1, C, H, W),) (or input_shape=), or a "
                          "tokenizer's output as a dict")
    plan = latency_plan(model, usable, policy, example)
    ranks: dict[str, tuple[int, ...] | None] = {}
    for c in usable:
        choice = plan.choices.get(c.name)
        if choice is None:
            ranks[c.name] = None
            continue
        fmt, rank = choice
        if fmt != c.fmt:
            c.fmt = fmt
            c.max_rank = tuple(int(x) for x in FORMATS[fmt].max_rank(dense_spec_of(c.module)))
        ranks[c.name] = (int(rank),) if isinstance(rank, int) else tuple(int(x) for x in rank)
    return ranks


def _check_budget_met(policy: Any, metric: str | None, report: DecomposeReport) -> None:
    if metric is None or metric == "latency":  # the latency plan reports its own target
        return
    got = report.totals[f"{metric}_ratio"]
    if got is not None and got > float(policy.ratio) * (1 + 1e-9):
        dense = [r for r in report.rows if r.format is None]
        why = f"; e.g. {dense[0].name}: {dense[0].note}" if dense else ""
        raise ConfigError(f"{metric} budget {policy.ratio} not met: the model keeps ×{got:.3f} "
                          f"of its {metric}{why}")


def to_dense(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace every factorized layer by its dense equivalent (`layer.to_dense()`); attention
    and HF `Conv1D` layers come back as their original module types."""
    if not inplace:
        model = copy.deepcopy(model)
    for name, mod in list(model.named_modules()):
        if name and isinstance(mod, FactorizedLayer):
            dense = mod.to_dense()
            dense.train(mod.training)
            cls = getattr(mod, foreign.FROM_CONV1D, None)
            if cls is not None:
                object.__setattr__(dense, foreign.FROM_CONV1D, cls)
                dense = foreign.to_original_type(dense)
            foreign.copy_hooks(mod, dense)
            foreign.replace_module(model, mod, dense)
    for name, mod in list(model.named_modules()):
        orig = foreign.to_original_type(mod) if name else None
        if orig is not None:
            foreign.copy_hooks(mod, orig)
            foreign.replace_module(model, mod, orig)
    return model


reconstruct = to_dense
