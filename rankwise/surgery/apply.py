"""Build one factorized layer for a candidate and swap it into the model (`apply`).

Factors are computed in float64 and stored in the layer's dtype. Keeps a layer dense when the
factorization does not save (params and MACs, or only the budget's
metric under a global budget), checks CP layers against their energy target (CP-ALS has no
Eckart-Young guarantee: a miss falls back to the exact CP of `rankwise.linalg.cp.cp_exact` or
keeps the layer dense), carries `requires_grad`, train mode and forward hooks over.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any

import torch
from torch import nn

from rankwise.errors import ConfigError, RankError, UnsupportedLayerError
from rankwise.layers import FORMATS, foreign
from rankwise.layers.base import FactorizedLayer, Rank, dense_spec_of
from rankwise.surgery.candidates import Candidate
from rankwise.surgery.rank import Energy
from rankwise.surgery.report import LayerRow

CP_ERROR_SLACK = 1e-6  # relative weight error allowed above a CP layer's energy target


def row(c: Candidate, fmt: str | None, rank: Rank | None, note: str,
         after: tuple[int, int | None] | None = None) -> LayerRow:
    params, macs = c.dense_cost()
    after = after or (params, macs)
    notes = "; ".join(n for n in (c.note, note) if n)
    return LayerRow(c.name, type(c.module).__name__, tuple(c.module.weight.shape), fmt, rank,
                    params, after[0], macs, after[1], notes)


def _cp_target(policy: Any) -> float | None:
    """Relative weight error a CP layer must reach under an energy policy: √(1 − t)."""
    return math.sqrt(max(0.0, 1.0 - policy.threshold)) if isinstance(policy, Energy) else None


def _float64_source(module: nn.Module) -> tuple[nn.Module, torch.dtype | None]:
    """`(module to factorize, dtype to cast the result back to)`: a float64 copy of a module
    with lower-precision float weights, so that the factors carry only their final rounding
    (float32 factors computed in float32 add the SVD's own ~1e-6 error per layer)."""
    dtype = module.weight.dtype
    if not dtype.is_floating_point or dtype == torch.float64:
        return module, None
    return copy.deepcopy(module).double(), dtype


def _build(c: Candidate, rank: Rank, opts: dict[str, Any]) -> nn.Module:
    cls = FORMATS[c.fmt]
    sig = inspect.signature(cls.from_dense).parameters
    kw = {"name": c.name} if "name" in sig else {}
    try:
        with torch.no_grad():
            source, dtype = _float64_source(c.module)
            new = cls.from_dense(source, rank, **kw, **opts)
            return new if dtype is None else new.to(dtype=dtype)
    except (RankError, UnsupportedLayerError) as e:
        raise type(e)(f"{c.name}: {e}") from e
    except TypeError as e:
        raise ConfigError(f"{c.name}: format_options[{c.fmt!r}] = {opts}: {e}") from e


def _rel_err(new: FactorizedLayer, w: torch.Tensor) -> float:
    with torch.no_grad():
        d = new.dense_weight().detach().double()
        ref = w.detach().double()
        return float((d - ref).norm() / ref.norm().clamp_min(1e-300))


def _cheaper(c: Candidate, rank: Rank, min_saving: float, metric: str | None
             ) -> tuple[str | None, tuple[int, int | None]]:
    """(why it is kept dense or None, cost at `rank`)."""
    params, macs = c.dense_cost()
    new_params, new_macs = c.cost(rank)
    limit = 1.0 - min_saving
    for what, before, after in (("params", params, new_params), ("MACs", macs, new_macs)):
        if before is None or after is None or (metric is not None and what.lower() != metric):
            continue
        if after >= before or (min_saving > 0 and after > limit * before):
            why = (f"kept dense: {c.fmt} at rank {rank} costs {after / before:.2f}× the dense "
                   f"{what}")
            return why + (f" (min_saving={min_saving})" if min_saving > 0 else ""), (0, 0)
    return None, (new_params, new_macs)


def apply(model: nn.Module, c: Candidate, rank: Rank, min_saving: float, metric: str | None,
           policy: Any, opts: dict[str, Any], index: foreign.ParentIndex | None = None
           ) -> LayerRow:
    why, cost = _cheaper(c, rank, min_saving, metric)
    if why is not None:
        return row(c, None, None, why)
    w = c.module.weight
    target = _cp_target(policy) if c.fmt == "cp" and metric is None else None
    note = ""
    if target is not None and target == 0.0:
        new = None  # lossless: CP-ALS is never exact, go straight to the exact construction
    else:
        new = _build(c, rank, opts)
    if target is not None and (new is None or _rel_err(new, w) > target + CP_ERROR_SLACK):
        spec = dense_spec_of(c.module)
        exact = FORMATS["cp"].exact_rank(w, spec)
        why, cost = _cheaper(c, exact, min_saving, metric)
        if why is not None:
            return row(c, None, None, f"kept dense: cp at rank {rank} misses the energy target "
                        f"and the exact CP rank {exact} is not cheaper ({why[12:]})")
        rank, note = exact, "exact CP (CP-ALS missed the energy target)"
        new = _build(c, rank, {"method": "exact"})
    new = new.to(device=w.device, dtype=w.dtype)
    new.train(c.module.training)
    for p in new.parameters():
        p.requires_grad_(w.requires_grad)
    old_bias, new_bias = getattr(c.module, "bias", None), getattr(new, "bias", None)
    if isinstance(old_bias, torch.Tensor) and isinstance(new_bias, nn.Parameter):
        new_bias.requires_grad_(old_bias.requires_grad)
    if foreign.copy_hooks(c.module, new):
        note = "; ".join(x for x in (note, "forward hooks carried over") if x)
    if c.module._backward_hooks or c.module._backward_pre_hooks:
        note = "; ".join(x for x in (note, "backward hooks NOT carried over: re-register") if x)
    foreign.replace_module(model, c.module, new, index)
    if metric == "params" and cost[1] is not None and c.dense_cost()[1] is not None \
            and cost[1] >= c.dense_cost()[1]:
        note = "; ".join(x for x in (note, f"MACs ×{cost[1] / c.dense_cost()[1]:.2f}") if x)
    return row(c, c.fmt, rank, note, cost)
