"""Pure per-step math of Trained Rank Pruning (Xu et al., arXiv 2004.14566): no modules, no state.

One TRP step on a stack of matricized weights `M (B, p, q)` (one matrix per layer, or per group of
a grouped conv) is one batched `torch.linalg.svd` call, an energy rank per matrix, and two
products with a rank mask (matrices of one stack may keep different ranks):

- `approx = U_r Σ_r V_rᵀ` — the truncated weight TRP substitutes before the forward (`--trp`);
- `subgrad = U_r V_rᵀ` — the truncated sub-gradient of the nuclear norm (reference code).

Also `trp_flops`, the reference code's cost counting (per output pixel, convs only, FC excluded).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from rankwise.analysis.profile import trace_inputs
from rankwise.errors import NonFiniteLossError
from rankwise.layers import FORMATS
from rankwise.layers.shapes import ConvSpec, conv2d_output_hw
from rankwise.linalg.grouped import (
    svd_dtype,
)
from rankwise.linalg.spectra import ENERGY_TOL
from rankwise.linalg.svd import thin_svd
from rankwise.surgery.trace import as_example, trace


def batched_energy_ranks(s: torch.Tensor, energy: float, power: int = 2) -> torch.Tensor:
    """Energy ranks of a stack of spectra `s (B, k)` (descending) → int64 `(B,)`, same device.

    With `power = 2`, row-wise the same as `rankwise.linalg.spectra.energy_rank(s[i], energy)`:
    smallest r with `Σ_{i≤r} σ_i² / Σ σ_i² ≥ energy − ENERGY_TOL` (float64); `power = 1` sums σ
    instead of σ². Capped at the numerical rank (σ > σ_max · k · eps(s.dtype)), at least 1.
    No host synchronisation.
    """
    k = s.shape[-1]
    eps = torch.finfo(s.dtype).eps
    s64 = s.to(torch.float64)
    top = s64[:, :1]
    safe_top = torch.where(top > 0, top, torch.ones_like(top))
    sq = (s64 / safe_top).pow(power)
    total = sq.sum(dim=1, keepdim=True)
    curve = torch.cumsum(sq, dim=1) / torch.where(total > 0, total, torch.ones_like(total))
    curve = torch.where(total > 0, curve, torch.ones_like(curve))
    curve[:, -1] = 1.0
    r = (curve < energy - ENERGY_TOL).sum(dim=1) + 1
    numerical = (s64 > top * (k * eps)).sum(dim=1).clamp(min=1)
    return torch.minimum(r.clamp(max=k), numerical).clamp(min=1)


def trp_project(
    mats: torch.Tensor, energy: float, approx: bool = True, subgrad: bool = True, power: int = 2
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """One TRP step on `mats (B, p, q)`: one `torch.linalg.svd` call for the whole stack.

    Returns `(approx (B, p, q) | None, subgrad (B, p, q) | None, ranks int64 (B,))` in `mats`'
    dtype and device: `approx = U_r Σ_r V_rᵀ` (None unless `approx`), `subgrad = U_r V_rᵀ`
    (None unless `subgrad`), `r = energy rank` per matrix (on σ^power). The SVD runs in
    float32 (float64 for float64 input). Raises `NonFiniteLossError` when the SVD fails
    (non-finite weights).
    """
    work = mats.detach().to(svd_dtype(mats.dtype))
    try:
        u, s, vh = thin_svd(work)
    except (RuntimeError, torch.linalg.LinAlgError) as e:
        raise NonFiniteLossError(
            f"TRP: SVD of a {tuple(mats.shape)} weight stack failed ({e}); the weights are not "
            "finite: lower the learning rate or the nuclear weight"
        ) from e
    ranks = batched_energy_ranks(s, energy, power)
    keep = (torch.arange(s.shape[-1], device=s.device) < ranks.unsqueeze(1)).to(s.dtype)
    sub = ((u * keep.unsqueeze(1)) @ vh).to(mats.dtype) if subgrad else None
    low = ((u * (s * keep).unsqueeze(1)) @ vh).to(mats.dtype) if approx else None
    return low, sub, ranks


def trp_flops(model: nn.Module, rows: list[Any], input_shape: tuple[int, ...] | None,
              example: Any = None) -> dict[str, Any]:
    """TRP-compatible FLOPs of the dense `model` and of its decomposition `rows` (code counting).

    Every `nn.Conv2d` run by a forward on zeros of `input_shape` (or on `example`, inputs as
    `decompose` takes them, when `input_shape` is None): FLOPs per output pixel (dense
    `n·(c/g)·kh·kw`; factorized `FORMAT.cost(spec, r, None)`, i.e. NC `c·kh·kw·r + r·n`, VH
    `c·r·kh + n·r·kw`, ND `(n·c + n·kh·kw)·r`) × its output pixels. Linears (the FC) are
    excluded.
    """
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    seen = trace_inputs(model, input_shape, convs) if input_shape is not None else \
        trace(model, as_example(example, None, model), convs)
    done = {r.name: r for r in rows if r.format is not None}
    per: dict[str, tuple[int, int]] = {}
    for name, shape in seen.items():
        spec = ConvSpec.from_conv(convs[name])
        h, w = conv2d_output_hw(spec, (shape[-2], shape[-1]))
        dense = math.prod(convs[name].weight.shape) * h * w
        row = done.get(name)
        after = dense if row is None else FORMATS[row.format].cost(spec, row.rank, None)[1] * h * w
        per[name] = (dense, after)
    before, after = sum(v[0] for v in per.values()), sum(v[1] for v in per.values())
    return {"per_layer": per, "flops_before": before, "flops_after": after,
            "speedup": before / after if after else None}
