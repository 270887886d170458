"""Ranks for every candidate layer from one rank policy: the single call point `allocate`.

Per-layer policies (`Fixed`, `Energy`, `VBMF`, …) are applied to each layer's spectra; global
budgets (`ParamsBudget`, `MacsBudget`: `policy.is_global`) are resolved over all candidates at
once by `rankwise.surgery.budget.allocate_budget`. A new global policy (e.g. a latency budget)
plugs in by adding a branch to `allocate` keyed on its `metric`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rankwise.errors import ConfigError, RankError
from rankwise.layers.base import Rank, dense_spec_of
from rankwise.surgery.budget import BudgetCandidate, allocate_budget
from rankwise.surgery.candidates import Candidate
from rankwise.surgery.rank import Fixed

INT_RANK_FORMATS = frozenset({"svd", "channel", "spatial", "cp"})


def as_rank(fmt: str, r: Sequence[int] | int) -> Rank:
    """A rank tuple as the layer's rank (an int for one-dimensional formats)."""
    t = (int(r),) if isinstance(r, int) else tuple(int(x) for x in r)
    return t[0] if fmt in INT_RANK_FORMATS and len(t) == 1 else t


def budget_metric(policy: Any) -> str | None:
    """"params" / "macs" for a global budget policy, else None."""
    return str(policy.metric) if getattr(policy, "is_global", False) else None


def allocate(policy: Any, cands: Sequence[Candidate], model_params: int,
             model_macs: int | None) -> dict[str, tuple[int, ...] | None]:
    """`{layer name: rank tuple, or None = keep dense}` for `cands` under `policy`.

    `model_params` / `model_macs` are the whole model's totals (the budget's denominator; MACs
    per sample, None when no forward pass ran).
    """
    metric = budget_metric(policy)
    if metric is None:
        return dict(_policy_ranks(cands, policy))
    return _budget_ranks(cands, policy, metric, model_params, model_macs)


def max_rank_error(c: Candidate, rank: Rank) -> RankError:
    return RankError(
        f"{c.name}: rank {rank} exceeds the {c.fmt} format's max rank {c.max_rank} for this layer "
        f"({type(c.module).__name__} {tuple(c.module.weight.shape)}); use a smaller rank, a "
        "relative policy (ratio:/energy:), or exclude the layer")


def _validate(c: Candidate, r: Sequence[int]) -> tuple[int, ...]:
    r = tuple(int(x) for x in r)
    if len(r) != len(c.max_rank):
        raise RankError(f"{c.name}: rank {r} has {len(r)} entries, the {c.fmt} format needs "
                        f"{len(c.max_rank)} (max {c.max_rank})")
    if any(x < 1 for x in r):
        raise RankError(f"{c.name}: rank {r} has an entry below 1")
    if any(x > m for x, m in zip(r, c.max_rank, strict=True)):
        raise max_rank_error(c, as_rank(c.fmt, r))
    return r


def _fixed_rank(c: Candidate, rank: int | Sequence[int]) -> tuple[int, ...]:
    r = (int(rank),) if isinstance(rank, int) else tuple(int(x) for x in rank)
    if len(r) == 1 and len(c.max_rank) > 1:
        r = r * len(c.max_rank)
    elif len(r) > 1 and len(c.max_rank) == 1 and c.fmt == "channel" and c.note:
        r = (min(r),)  # a 1×1 conv moved to "channel" gets the smallest of the conv ranks
    return _validate(c, r)


def _budget_ranks(cands: Sequence[Candidate], policy: Any, metric: str, model_params: int,
                  model_macs: int | None) -> dict[str, tuple[int, ...] | None]:
    if metric == "macs" and model_macs is None:
        raise ConfigError("a MACs budget needs a forward pass: pass example_inputs=(x,) (or "
                          "input_shape=) to decompose")
    if metric == "macs":
        missing = [c.name for c in cands if c.in_shape is None]
        if missing:
            raise ConfigError(f"MACs budget: {missing[0]} did not run in the forward pass on the "
                              "example inputs; exclude it or pass inputs that reach it")
    idx = 0 if metric == "params" else 1
    total = model_params if idx == 0 else int(model_macs or 0)
    fixed = total - sum(int(c.dense_cost()[idx] or 0) for c in cands)
    bc = [BudgetCandidate(c.name, c.spectra, c.max_rank, int(c.dense_cost()[idx] or 0),
                          lambda r, c=c: int(c.cost(as_rank(c.fmt, r))[idx] or 0)) for c in cands]
    ranks = allocate_budget(bc, float(policy.ratio), metric, fixed_cost=max(0, fixed))
    return {c.name: None if r is None else tuple(int(x) for x in r)
            for c, r in zip(cands, ranks, strict=True)}


def matrix_shapes(fmt: str, spec: Any) -> list[tuple[int, int]]:
    """(p, q) of the matrix each spectrum of `fmt` comes from (VBMF needs them): per group for a
    grouped conv, per output filter for "nd" (each filter's `(c/g, kh·kw)` matrix)."""
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
    if fmt == "nd":
        return [(c, kh * kw)]
    if fmt == "tucker2":
        return [(n, c * kh * kw), (c, n * kh * kw)]
    return [(n, c * kh * kw)]  # channel, cp


def _prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _policy_ranks(cands: Sequence[Candidate], policy: Any) -> dict[str, tuple[int, ...]]:
    if isinstance(policy, Fixed):
        policy = policy.rank
    if isinstance(policy, (int, tuple, list)):
        return {c.name: _fixed_rank(c, policy) for c in cands}
    if not hasattr(policy, "select"):
        raise ConfigError(f"rank={policy!r} is not a rank policy, a string like 'energy:0.9', "
                          "or an int/tuple")
    out = {}
    for c in cands:
        shapes = matrix_shapes(c.fmt, dense_spec_of(c.module)) \
            if getattr(policy, "needs_shapes", False) else None
        out[c.name] = _validate(c, policy.select(c.spectra, c.max_rank, shapes=shapes)
                                if shapes is not None else policy.select(c.spectra, c.max_rank))
    return out
