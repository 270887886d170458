"""Model surgery: `decompose()` rewrites conv/linear layers into factorized layers.

This module decides *how* to rewrite (which layers, which format, replacing modules in place);
*how much* to keep is the rank policy's job (`rankwise.surgery.rank`). Policies see
`FORMAT.spectra(weight, spec)` and `FORMAT.max_rank(spec)`; global budgets (`ParamsBudget`,
`MacsBudget`) are resolved here over all candidate layers with `rank.allocate_budget`.

Layer → format: every `nn.Conv2d` gets `format`, every `nn.Linear` gets `linear_format`, except
1×1 convs, which are matrices and always get `"channel"` (a truncated SVD of the `(n, c)` weight)
whatever the conv format. `format` may name a linear format (`"svd"`, `"tt"`): then linears use
it and convs use `"channel"`. `None` leaves that layer type dense.
"""

from __future__ import annotations

import copy
import fnmatch
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rankwise.analysis.profile import count as count_model
from rankwise.analysis.profile import dense_macs, trace_inputs
from rankwise.errors import ConfigError, RankError, UnsupportedLayerError
from rankwise.layers import FORMATS
from rankwise.layers.base import FactorizedLayer, Rank, dense_spec_of
from rankwise.layers.shapes import conv2d_params, linear_params
from rankwise.surgery.rank import BudgetCandidate, Energy, Fixed, allocate_budget, parse_rank
from rankwise.surgery.report import DecomposeReport, LayerRow

Pattern = str | re.Pattern[str]
Filter = Pattern | Sequence[Pattern] | Callable[[str, nn.Module], bool] | None
INT_RANK_FORMATS = frozenset({"svd", "channel", "spatial", "cp"})
DEFAULT_RANK = Energy(0.9)  # frozen dataclass: safe as a default

__all__ = ["DecomposeReport", "LayerRow", "decompose", "matches", "reconstruct", "to_dense"]


def matches(name: str, module: nn.Module, patterns: Filter) -> bool:
    """Whether module `name` is selected by `patterns`.

    A string matches by glob (`fnmatch`, e.g. `"layer1.*"`, `"fc"`) or, failing that, by regex
    `fullmatch`; a compiled `re.Pattern` by `search`; a callable is called as `f(name, module)`.
    A sequence matches when any element does.
    """
    if patterns is None:
        return False
    if callable(patterns) and not isinstance(patterns, re.Pattern):
        return bool(patterns(name, module))
    if isinstance(patterns, (str, re.Pattern)):
        patterns = [patterns]
    for p in patterns:
        if isinstance(p, re.Pattern):
            if p.search(name):
                return True
        elif fnmatch.fnmatchcase(name, p):
            return True
        else:
            try:
                if re.fullmatch(p, name):
                    return True
            except re.error:
                pass
    return False


def _weight_layer(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return isinstance(m, nn.MultiheadAttention) or (
        isinstance(w, torch.Tensor) and w.dim() >= 2 and not any(True for _ in m.children()))


def _formats(format: str | None, linear_format: str | None) -> tuple[str | None, str | None]:
    for f in (format, linear_format):
        if f is not None and f not in FORMATS:
            raise ConfigError(f"unknown format {f!r}; available: {sorted(FORMATS)}")
    if format is not None and FORMATS[format].dense_type is nn.Linear:
        return "channel", format
    if linear_format is not None and FORMATS[linear_format].dense_type is not nn.Linear:
        raise ConfigError(f"linear_format={linear_format!r} is a conv format; use 'svd' or 'tt'")
    return format, linear_format


def _as_rank(fmt: str, r: Sequence[int] | int) -> Rank:
    t = (int(r),) if isinstance(r, int) else tuple(int(x) for x in r)
    return t[0] if fmt in INT_RANK_FORMATS and len(t) == 1 else t


def _budget_metric(policy: Any) -> str | None:
    """"params" / "macs" for a global budget policy, else None."""
    return str(policy.metric) if getattr(policy, "is_global", False) else None


@dataclass
class _Candidate:
    name: str
    module: nn.Module
    fmt: str
    explicit: bool
    note: str = ""
    in_shape: tuple[int, ...] | None = None
    spectra: list[torch.Tensor] = field(default_factory=list)
    max_rank: tuple[int, ...] = ()

    @property
    def tokens(self) -> int:
        n = 1
        for s in (self.in_shape or (1, 1))[1:-1]:
            n *= int(s)
        return n

    def dense_cost(self) -> tuple[int, int | None]:
        spec = dense_spec_of(self.module)
        params = conv2d_params(spec) if isinstance(self.module, nn.Conv2d) else linear_params(spec)
        macs = dense_macs(self.module, self.in_shape) if self.in_shape is not None else None
        return params, macs

    def cost(self, rank: Rank) -> tuple[int, int | None]:
        cls, spec = FORMATS[self.fmt], dense_spec_of(self.module)
        if isinstance(self.module, nn.Linear):
            params, macs = cls.cost(spec, rank, None)
            return params, macs * self.tokens if self.in_shape is not None else None
        hw = None if self.in_shape is None else (self.in_shape[-2], self.in_shape[-1])
        params, macs = cls.cost(spec, rank, hw)
        return params, macs if hw is not None else None


def _select_candidates(model: nn.Module, conv_fmt: str | None, lin_fmt: str | None,
                       include: Filter, exclude: Filter) -> list[_Candidate]:
    out: list[_Candidate] = []
    skip_prefixes: list[str] = []
    for name, mod in model.named_modules():
        if not name or any(name.startswith(p) for p in skip_prefixes):
            continue
        if isinstance(mod, (FactorizedLayer, nn.MultiheadAttention)):
            skip_prefixes.append(name + ".")
        explicit = include is not None and matches(name, mod, include)
        if (include is not None and not explicit) or matches(name, mod, exclude):
            continue
        if isinstance(mod, FactorizedLayer):
            continue  # already factorized: to_dense(model) first to re-decompose it
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            is_conv = isinstance(mod, nn.Conv2d)
            fmt = conv_fmt if is_conv else lin_fmt
            if fmt is None:
                continue
            note = ""
            if is_conv and tuple(mod.kernel_size) == (1, 1) and fmt != "channel":
                fmt, note = "channel", "1×1 conv: channel format (a matrix SVD)"
            out.append(_Candidate(name, mod, fmt, explicit, note))
        elif explicit and _weight_layer(mod):
            raise UnsupportedLayerError(
                f"{name} is a {type(mod).__name__}, which rankwise cannot factorize (only "
                "nn.Conv2d and nn.Linear); narrow --include/include= so it does not match it")
    return out


def _inside_factorized(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), FactorizedLayer)
               for i in range(1, len(parts)))


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put `new` at every place `old` is registered in `model`."""
    for parent in model.modules():
        for child_name, child in list(parent._modules.items()):
            if child is old:
                setattr(parent, child_name, new)


def _max_rank_error(c: _Candidate, rank: Rank) -> RankError:
    return RankError(
        f"{c.name}: rank {rank} exceeds the {c.fmt} format's max rank {c.max_rank} for this layer "
        f"({type(c.module).__name__} {tuple(c.module.weight.shape)}); use a smaller rank, a "
        "relative policy (ratio:/energy:), or exclude the layer")


def _validate(c: _Candidate, r: Sequence[int]) -> tuple[int, ...]:
    r = tuple(int(x) for x in r)
    if len(r) != len(c.max_rank):
        raise RankError(f"{c.name}: rank {r} has {len(r)} entries, the {c.fmt} format needs "
                        f"{len(c.max_rank)} (max {c.max_rank})")
    if any(x < 1 for x in r):
        raise RankError(f"{c.name}: rank {r} has an entry below 1")
    if any(x > m for x, m in zip(r, c.max_rank, strict=True)):
        raise _max_rank_error(c, _as_rank(c.fmt, r))
    return r


def _fixed_rank(c: _Candidate, rank: int | Sequence[int]) -> tuple[int, ...]:
    r = (int(rank),) if isinstance(rank, int) else tuple(int(x) for x in rank)
    if len(r) == 1 and len(c.max_rank) > 1:
        r = r * len(c.max_rank)
    elif len(r) > 1 and len(c.max_rank) == 1 and c.fmt == "channel" and c.note:
        r = (min(r),)  # a 1×1 conv moved to "channel" gets the smallest of the conv ranks
    return _validate(c, r)


def _budget_ranks(cands: list[_Candidate], policy: Any, metric: str, model: nn.Module,
                  model_macs: int | None) -> dict[str, tuple[int, ...] | None]:
    if metric == "macs" and (model_macs is None or any(c.in_shape is None for c in cands)):
        raise ConfigError("MacsBudget needs input_shape and every candidate layer to run in the "
                          "forward pass; pass input_shape= or exclude unused layers")
    idx = 0 if metric == "params" else 1
    total = sum(p.numel() for p in model.parameters()) if idx == 0 else int(model_macs or 0)
    fixed = total - sum(int(c.dense_cost()[idx] or 0) for c in cands)
    bc = [BudgetCandidate(c.name, c.spectra, c.max_rank, int(c.dense_cost()[idx] or 0),
                          lambda r, c=c: int(c.cost(_as_rank(c.fmt, r))[idx] or 0)) for c in cands]
    ranks = allocate_budget(bc, float(policy.ratio), metric, fixed_cost=max(0, fixed))
    return {c.name: None if r is None else tuple(int(x) for x in r)
            for c, r in zip(cands, ranks, strict=True)}


def _matrix_shapes(fmt: str, spec: Any) -> list[tuple[int, int]]:
    """(p, q) of the matrix each spectrum of `fmt` comes from (VBMF needs them), per group."""
    if fmt == "svd":
        return [(spec.out_features, spec.in_features)]
    if fmt == "tt":
        from rankwise.layers.tt_linear import resolve_modes

        ins, outs = resolve_modes(spec)
        sizes = [m * n for m, n in zip(outs, ins, strict=True)]
        return [(_prod(sizes[:k]), _prod(sizes[k:])) for k in range(1, len(sizes))]
    n, c = spec.out_channels // spec.groups, spec.in_channels // spec.groups
    kh, kw = spec.kernel_size
    if fmt == "spatial":
        return [(n * kw, c * kh)]
    if fmt == "tucker2":
        return [(n, c * kh * kw), (c, n * kh * kw)]
    return [(n, c * kh * kw)]  # channel, cp


def _prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _policy_ranks(cands: list[_Candidate], policy: Any) -> dict[str, tuple[int, ...]]:
    if isinstance(policy, Fixed):
        policy = policy.rank
    if isinstance(policy, (int, tuple, list)):
        return {c.name: _fixed_rank(c, policy) for c in cands}
    if not hasattr(policy, "select"):
        raise ConfigError(f"rank={policy!r} is not a rank policy, a string like 'energy:0.9', "
                          "or an int/tuple")
    out = {}
    for c in cands:
        shapes = _matrix_shapes(c.fmt, dense_spec_of(c.module)) \
            if getattr(policy, "needs_shapes", False) else None
        out[c.name] = _validate(c, policy.select(c.spectra, c.max_rank, shapes=shapes)
                                if shapes is not None else policy.select(c.spectra, c.max_rank))
    return out


def decompose(model: nn.Module, format: str | None = "tucker2", rank: Any = DEFAULT_RANK,
              include: Filter = None, exclude: Filter = None, inplace: bool = False,
              input_shape: Sequence[int] | None = (3, 32, 32), skip_first_conv: bool = False,
              linear_format: str | None = "svd", min_saving: float = 0.0,
              ) -> tuple[nn.Module, DecomposeReport]:
    """Replace conv/linear layers of `model` by factorized layers.

    `rank`: a policy object from `rankwise.surgery.rank`, a string for `parse_rank`
    (`"energy:0.9"`, `"budget:params=0.3"`), or an int / tuple used for every layer.
    `include` / `exclude`: glob or regex strings, compiled patterns, or `f(name, module)`; with
    `include`, only matching layers are candidates and a matching non-conv/linear weight layer
    raises `UnsupportedLayerError`. `input_shape` (no batch dim) is run once through the model
    to record each layer's input size (MACs); None skips it (MACs unknown). A layer stays dense
    unless its factorization is below `(1 - min_saving)` of the dense params and MACs.
    Returns the (copied unless `inplace`) model and a `DecomposeReport`.
    """
    if not 0.0 <= min_saving < 1.0:
        raise ConfigError(f"min_saving={min_saving} must be in [0, 1)")
    policy = parse_rank(rank) if isinstance(rank, str) else rank
    conv_fmt, lin_fmt = _formats(format, linear_format)
    if not inplace:
        model = copy.deepcopy(model)
    cands = _select_candidates(model, conv_fmt, lin_fmt, include, exclude)
    params_before = sum(p.numel() for p in model.parameters())
    macs_before: int | None = None
    if input_shape is not None:
        _, _, macs_before = count_model(model, input_shape)
        traced = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        traced.update({c.name: c.module for c in cands})
        seen = trace_inputs(model, input_shape, traced)
        for c in cands:
            c.in_shape = seen.get(c.name)
        order = list(seen)  # execution order
    else:
        order = [n for n, _ in model.named_modules()]
    rows: list[LayerRow] = []
    if skip_first_conv:  # the model's first conv in execution order, even if not a candidate
        first = next((n for n in order if isinstance(model.get_submodule(n), nn.Conv2d)
                      and not _inside_factorized(model, n)), None)
        keep = [c for c in cands if c.name == first]
        cands = [c for c in cands if c.name != first]
        for c in keep:
            rows.append(_row(c, None, None, "kept dense: first conv (skip_first_conv)"))

    usable: list[_Candidate] = []
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
            rows.append(_row(c, None, None, f"kept dense: {c.fmt} does not support it ({e})"))
            continue
        usable.append(c)

    metric = _budget_metric(policy)
    if metric is not None:
        ranks = _budget_ranks(usable, policy, metric, model, macs_before)
    else:
        ranks = _policy_ranks(usable, policy)
    for c in usable:
        r = ranks[c.name]
        if r is None:
            rows.append(_row(c, None, None, f"kept dense: the {metric} budget allocator found no "
                                            "rank that saves enough"))
        else:
            rows.append(_apply(model, c, _as_rank(c.fmt, r), min_saving))
    order_index = {n: i for i, n in enumerate(n for n, _ in model.named_modules())}
    rows.sort(key=lambda row: order_index.get(row.name, len(order_index)))
    params_after = sum(p.numel() for p in model.parameters())
    macs_after = None
    if macs_before is not None:
        macs_after = macs_before + sum((row.macs_after or 0) - (row.macs_before or 0)
                                       for row in rows if row.format is not None)
    policy_name = str(policy)
    report = DecomposeReport(rows, format=format, linear_format=linear_format, policy=policy_name,
                             model_params_before=params_before, model_params_after=params_after,
                             model_macs_before=macs_before, model_macs_after=macs_after)
    return model, report


def _row(c: _Candidate, fmt: str | None, rank: Rank | None, note: str,
         after: tuple[int, int | None] | None = None) -> LayerRow:
    params, macs = c.dense_cost()
    after = after or (params, macs)
    notes = "; ".join(n for n in (c.note, note) if n)
    return LayerRow(c.name, type(c.module).__name__, tuple(c.module.weight.shape), fmt, rank,
                    params, after[0], macs, after[1], notes)


def _apply(model: nn.Module, c: _Candidate, rank: Rank, min_saving: float) -> LayerRow:
    params, macs = c.dense_cost()
    new_params, new_macs = c.cost(rank)
    limit = 1.0 - min_saving
    for what, before, after in (("params", params, new_params), ("MACs", macs, new_macs)):
        if before is None or after is None:
            continue
        if after >= before or (min_saving > 0 and after > limit * before):
            why = (f"kept dense: {c.fmt} at rank {rank} costs {after / before:.2f}× the dense "
                   f"{what}")
            if min_saving > 0:
                why += f" (min_saving={min_saving})"
            return _row(c, None, None, why)
    cls = FORMATS[c.fmt]
    try:
        with torch.no_grad():
            kw = {"name": c.name} if "name" in inspect.signature(cls.from_dense).parameters else {}
            new = cls.from_dense(c.module, rank, **kw)
    except (RankError, UnsupportedLayerError) as e:
        raise type(e)(f"{c.name}: {e}") from e
    w = c.module.weight
    new = new.to(device=w.device, dtype=w.dtype)
    new.train(c.module.training)
    _replace(model, c.module, new)
    return _row(c, c.fmt, rank, "", (new_params, new_macs))


def to_dense(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace every factorized layer by its dense equivalent (`layer.to_dense()`)."""
    if not inplace:
        model = copy.deepcopy(model)
    for name, mod in list(model.named_modules()):
        if name and isinstance(mod, FactorizedLayer):
            dense = mod.to_dense()
            dense.train(mod.training)
            _replace(model, mod, dense)
    return model


reconstruct = to_dense
