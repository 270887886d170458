"""ELRT model building: the dense architecture's layer specs become factorized layers with a
variance-matching init, ranks from a rank policy, without ever allocating the dense weights of
replaced layers when the base model lives on the `meta` device. See `rankwise.methods.elrt`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rankwise.errors import ConfigError, RankError, UnsupportedLayerError
from rankwise.layers import FORMATS
from rankwise.layers.base import FactorizedLayer, Rank, dense_spec_of
from rankwise.layers.init import init_dense_, init_factorized_
from rankwise.layers.shapes import conv2d_macs, conv2d_params, linear_macs, linear_params
from rankwise.methods.elrt_config import (
    INT_RANK_FORMATS,
    LINEAR_FORMATS,
    ELRTConfig,
    resolve_policy,
)
from rankwise.methods.regularizers import factorized_layers, layer_penalties
from rankwise.surgery.decompose import DecomposeReport, LayerRow, matches


def _formats(cfg: ELRTConfig) -> tuple[str | None, str | None]:
    if cfg.format in LINEAR_FORMATS:
        return "channel", cfg.format
    return cfg.format, None if cfg.linear_format == "none" else cfg.linear_format


def _layer_rank(fmt: str, r: tuple[int, ...]) -> Rank:
    r = tuple(int(x) for x in r)
    return r[0] if fmt in INT_RANK_FORMATS and len(r) == 1 else r


@dataclass
class _Cand:
    name: str
    module: nn.Module
    fmt: str
    note: str = ""
    in_shape: tuple[int, ...] | None = None
    max_rank: tuple[int, ...] = ()

    def dense_cost(self) -> tuple[int, int | None]:
        spec = dense_spec_of(self.module)
        if isinstance(self.module, nn.Conv2d):
            macs = None if self.in_shape is None else conv2d_macs(spec, self.in_shape[-2:])
            return conv2d_params(spec), macs
        tokens = 1 if self.in_shape is None else max(1, math.prod(self.in_shape[1:-1]))
        return linear_params(spec), None if self.in_shape is None else linear_macs(spec, tokens)

    def cost(self, rank: Rank) -> tuple[int, int | None]:
        cls, spec = FORMATS[self.fmt], dense_spec_of(self.module)
        if isinstance(self.module, nn.Linear):
            params, macs = cls.cost(spec, rank, None)
            tokens = 1 if self.in_shape is None else max(1, math.prod(self.in_shape[1:-1]))
            return params, None if self.in_shape is None else macs * tokens
        hw = None if self.in_shape is None else (self.in_shape[-2], self.in_shape[-1])
        params, macs = cls.cost(spec, rank, hw)
        return params, macs if hw is not None else None

    def row(self, fmt: str | None, rank: Rank | None, note: str,
            after: tuple[int, int | None] | None = None) -> LayerRow:
        params, macs = self.dense_cost()
        after = after or (params, macs)
        spec = dense_spec_of(self.module)
        shape = ((spec.out_features, spec.in_features) if isinstance(self.module, nn.Linear)
                 else (spec.out_channels, spec.in_channels // spec.groups, *spec.kernel_size))
        notes = "; ".join(n for n in (self.note, note) if n)
        return LayerRow(self.name, type(self.module).__name__, shape, fmt, rank, params,
                        after[0], macs, after[1], notes)


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        if not t.is_meta:
            return t.device
    return torch.device("cpu")


def _candidates(model: nn.Module, cfg: ELRTConfig) -> list[_Cand]:
    conv_fmt, lin_fmt = _formats(cfg)
    out: list[_Cand] = []
    factorized: list[str] = []  # already-factorized layers: their sub-convs are not candidates
    for name, mod in model.named_modules():
        if any(name.startswith(p + ".") for p in factorized):
            continue
        if isinstance(mod, FactorizedLayer):
            factorized.append(name)
            continue
        if not name or not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        if cfg.include and not matches(name, mod, list(cfg.include)):
            continue
        if cfg.exclude and matches(name, mod, list(cfg.exclude)):
            continue
        is_conv = isinstance(mod, nn.Conv2d)
        fmt = conv_fmt if is_conv else lin_fmt
        if fmt is None:
            continue
        note = ""
        if is_conv and tuple(mod.kernel_size) == (1, 1) and fmt != "channel":
            fmt, note = "channel", "1×1 conv: channel format (a matrix factorization)"
        out.append(_Cand(name, mod, fmt, note))
    return out


def round_rank(rank: tuple[int, ...], max_rank: tuple[int, ...],
               multiple: int) -> tuple[int, ...]:
    """Each entry rounded down to a multiple of `multiple` (at least `multiple`), capped at its
    max rank: SIMD/tensor-core friendly channel counts (e.g. 8)."""
    if multiple <= 1:
        return tuple(int(r) for r in rank)
    return tuple(min(m, max(multiple, r // multiple * multiple))
                 for r, m in zip(rank, max_rank, strict=True))


def _uniform_budget(cands: list[_Cand], dense: list[int], idx: int, target: float,
                    total: int, multiple: int = 1) -> dict[str, tuple[int, ...] | None]:
    """The largest single fraction f (bisection) with `Ratio(f)` ranks in every layer (dense
    where that does not save) meeting `total_after ≤ target · total`."""
    from rankwise.surgery.rank import Ratio

    fixed = total - sum(dense)

    def plan(f: float) -> tuple[int, dict[str, tuple[int, ...] | None]]:
        spent, out = fixed, {}
        for c, d in zip(cands, dense, strict=True):
            r = round_rank(tuple(Ratio(f).select([], c.max_rank)), c.max_rank, multiple)
            cost = int(c.cost(_layer_rank(c.fmt, r))[idx] or 0)
            out[c.name] = r if cost < d else None
            spent += min(cost, d)
        return spent, out

    budget = target * total * (1.0 + 1e-12)
    spent, best = plan(1e-9)
    if spent > budget:
        raise ConfigError(f"ELRT budget {target} is unreachable: rank 1 in every targeted layer "
                          f"already keeps {spent / total:.4f}; use a larger ratio")
    lo, hi = 1e-9, 1.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        spent, out = plan(mid)
        if spent <= budget:
            lo, best = mid, out
        else:
            hi = mid
    spent, out = plan(1.0)
    return out if spent <= budget else best


def _allocate(cands: list[_Cand], policy: Any, model: nn.Module, total_macs: int | None,
              allocation: str = "uniform", multiple: int = 1,
              ) -> dict[str, tuple[int, ...] | None]:
    """Per-layer rank tuples (None = keep dense), rounded down to `multiple`. Budgets:
    "uniform" (one rank fraction for all layers, bisection, rounding included) or "greedy"
    (`rank.allocate_budget` on flat spectra, rounded afterwards: stays within budget)."""
    from rankwise.surgery.rank import BudgetCandidate, MacsBudget, allocate_budget

    if not policy.is_global:
        return {c.name: round_rank(tuple(policy.select([], c.max_rank)), c.max_rank, multiple)
                for c in cands}
    idx = 1 if isinstance(policy, MacsBudget) else 0
    metric = "macs" if idx else "params"
    if idx and (total_macs is None or any(c.in_shape is None for c in cands)):
        raise ConfigError("ELRT MACs budget needs every candidate layer to run in the forward "
                          "pass on input_shape; exclude unused layers (--elrt-exclude)")
    total = sum(p.numel() for p in model.parameters()) if idx == 0 else int(total_macs or 0)
    dense = [int(c.dense_cost()[idx] or 0) for c in cands]
    if allocation == "uniform":
        return _uniform_budget(cands, dense, idx, float(policy.ratio), total, multiple)
    flat = [[torch.ones(m, dtype=torch.float64) for m in c.max_rank] for c in cands]
    bc = [BudgetCandidate(c.name, s, c.max_rank, d,
                          lambda r, c=c: int(c.cost(_layer_rank(c.fmt, r))[idx] or 0))
          for c, s, d in zip(cands, flat, dense, strict=True)]
    ranks = allocate_budget(bc, float(policy.ratio), metric, fixed_cost=max(0, total - sum(dense)))
    return {c.name: None if r is None else round_rank(tuple(r), c.max_rank, multiple)
            for c, r in zip(cands, ranks, strict=True)}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _materialize(model: nn.Module, device: torch.device, cfg: ELRTConfig,
                 gen: torch.Generator | None) -> None:
    """Give real storage to every module still on `meta` (kept-dense convs/linears get the
    Kaiming target of `cfg`, others their `reset_parameters()`)."""
    inside: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(m, FactorizedLayer):
            inside.append(name)
            continue
        own = list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))
        if not any(t.is_meta for t in own):
            continue
        m.to_empty(device=device, recurse=False)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            init_dense_(m, cfg.init_mode, cfg.nonlinearity, distribution=cfg.init_distribution,
                        generator=gen)
        elif hasattr(m, "reset_parameters"):
            m.reset_parameters()
        else:
            raise ConfigError(f"{name or type(m).__name__} ({type(m).__name__}) is on the meta "
                              "device and has no reset_parameters(); build the base model on a "
                              "real device instead")


def _traced(model: nn.Module, input_shape: tuple[int, ...] | None, example: Any,
            layers: dict[str, nn.Module]) -> tuple[dict[str, tuple[int, ...]], int, int]:
    """(input shape of each of `layers`, params, MACs per sample) of one forward on zeros of
    `input_shape`, or on `example` (as `decompose` takes it; token ids by keyword) if given."""
    from rankwise.analysis.profile import count, trace_inputs
    from rankwise.surgery.trace import as_example, counted_layers, example_on, model_macs, trace

    if example is None:
        seen = trace_inputs(model, input_shape, layers)
        _, params, macs = count(model, input_shape)
        return seen, params, macs
    where = next((p.device for p in model.parameters()), torch.device("cpu"))
    seen = trace(model, example_on(as_example(example, None, model), where),
                 {**counted_layers(model), **layers})
    return seen, sum(p.numel() for p in model.parameters()), model_macs(model, seen)


def build_factorized(model: nn.Module, cfg: ELRTConfig, input_shape: tuple[int, ...] | None,
                     device: torch.device | str | None = None, example: Any = None
                     ) -> tuple[nn.Module, DecomposeReport]:
    """Replace the targeted Conv2d/Linear of `model` (in place) by freshly initialized factorized
    layers; return it with a `DecomposeReport` (one row per conv/linear visited).

    `model` may live on `meta` (no dense weight is ever allocated): the factorized layers and
    the remaining modules are then created on `device` (default: CPU, or the device of the
    model's real tensors). `input_shape` (C, H, W), or `example` (inputs as `decompose` takes
    them, e.g. token ids by keyword), is traced once (on meta when the model is) for MACs and
    layer order (first conv, classifier)."""
    policy = resolve_policy(cfg.rank)
    dev = torch.device(device) if device is not None else _device_of(model)
    gen = torch.Generator().manual_seed(int(cfg.seed)) if cfg.seed is not None else None
    input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
    dense_layers = {n: m for n, m in model.named_modules()
                    if isinstance(m, (nn.Conv2d, nn.Linear))}
    seen, params_before, macs_before = _traced(model, input_shape, example, dense_layers)
    cands = _candidates(model, cfg)
    for c in cands:
        c.in_shape = seen.get(c.name)
    rows: list[LayerRow] = []
    order = [n for n in seen if n in dense_layers]
    skip: dict[str, str] = {}
    convs = [n for n in order if isinstance(dense_layers[n], nn.Conv2d)]
    linears = [n for n in order if isinstance(dense_layers[n], nn.Linear)]
    if cfg.skip_first_conv and convs:
        skip[convs[0]] = "kept dense: first conv (skip_first_conv)"
    if cfg.skip_classifier and linears:
        skip[linears[-1]] = "kept dense: classifier (skip_classifier)"
    usable: list[_Cand] = []
    for c in cands:
        if c.name in skip:
            rows.append(c.row(None, None, skip[c.name]))
            continue
        try:
            c.max_rank = tuple(int(x) for x in FORMATS[c.fmt].max_rank(dense_spec_of(c.module)))
        except (UnsupportedLayerError, ConfigError, RankError) as e:
            rows.append(c.row(None, None, f"kept dense: {c.fmt} does not support it ({e})"))
            continue
        usable.append(c)
    ranks = _allocate(usable, policy, model, macs_before, cfg.budget_allocation,
                      int(cfg.rank_multiple))
    for c in usable:
        r = ranks[c.name]
        if r is None:
            rows.append(c.row(None, None, f"kept dense: the {policy} allocator found no rank "
                                          "that saves"))
            continue
        rank = _layer_rank(c.fmt, r)
        (params, macs), (new_params, new_macs) = c.dense_cost(), c.cost(rank)
        worse = [w for w, b, a in (("params", params, new_params), ("MACs", macs, new_macs))
                 if b is not None and a is not None and a >= b]
        if worse:
            rows.append(c.row(None, None, f"kept dense: {c.fmt} at rank {rank} does not save "
                                          f"{' or '.join(worse)} ({new_params:,} vs {params:,} "
                                          "params)"))
            continue
        new = FORMATS[c.fmt].from_spec(dense_spec_of(c.module), rank, name=c.name, device=dev,
                                       dtype=c.module.weight.dtype)
        init_factorized_(new, cfg.init_mode, cfg.nonlinearity, distribution=cfg.init_distribution,
                         generator=gen)
        new.train(c.module.training)
        _replace(model, c.name, new)
        rows.append(c.row(c.fmt, rank, "", (new_params, new_macs)))
    _materialize(model, dev, cfg, gen)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise ConfigError(f"ELRT left tensors on the meta device: {left[:3]}; build the base "
                          "model on a real device")
    index = {n: i for i, (n, _) in enumerate(model.named_modules())}
    rows.sort(key=lambda row: index.get(row.name, len(index)))
    macs_after = None if macs_before is None else macs_before + sum(
        (r.macs_after or 0) - (r.macs_before or 0) for r in rows if r.format is not None)
    report = DecomposeReport(rows, format=cfg.format, linear_format=_formats(cfg)[1],
                             policy=str(policy), model_params_before=params_before,
                             model_params_after=sum(p.numel() for p in model.parameters()),
                             model_macs_before=macs_before, model_macs_after=macs_after)
    return model, report


def build_model(name: str, cfg: ELRTConfig, input_shape: tuple[int, ...] | None = None,
                device: torch.device | str | None = None, **model_kwargs: Any,
                ) -> tuple[nn.Module, DecomposeReport]:
    """`create_model(name, **model_kwargs)` on the `meta` device, then `build_factorized`:
    the ELRT model without ever allocating a dense weight of a replaced layer."""
    from rankwise.models import create_model, default_input_shape

    with torch.device("meta"):
        base = create_model(name, **model_kwargs)
    shape = tuple(input_shape) if input_shape is not None else tuple(default_input_shape(name))
    return build_factorized(base, cfg, shape, device=device)


def elrt_summary(model: nn.Module, input_shape: tuple[int, ...] | None,
                 example: Any = None) -> dict[str, Any]:
    """Params/MACs of `model` and of its dense counterpart, per factorized layer and in total
    (counted on zeros of `input_shape`, or on `example`)."""
    layers = factorized_layers(model)
    seen, params, macs = _traced(model, input_shape, example, dict(layers))
    penalties = layer_penalties(model)
    rows, d_params, d_macs = [], params, macs
    for name, layer in layers:
        with torch.device("meta"):  # only the spec is needed: no dense storage
            dense = layer.dense_spec.make()
        cand = _Cand(name, dense, layer.format, in_shape=seen.get(name))
        (dp, dm), (fp, fm) = cand.dense_cost(), cand.cost(layer.rank)
        d_params += dp - fp
        d_macs += (dm or 0) - (fm or 0)
        rank = list(layer.rank) if isinstance(layer.rank, tuple) else layer.rank
        rows.append({"name": name, "format": layer.format, "rank": rank, "params": fp,
                     "dense_params": dp, "macs": fm, "dense_macs": dm,
                     "orth_penalty": penalties.get(name)})
    return {"params": params, "dense_params": d_params, "params_ratio": params / d_params,
            "macs": macs, "dense_macs": d_macs, "macs_ratio": macs / d_macs if d_macs else None,
            "layers": rows}
