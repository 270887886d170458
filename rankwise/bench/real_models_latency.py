"""Latency-budget cells of the real-model matrix: what `rank="budget:latency=R"` buys on real
architectures, transformers included, in the precision they are deployed in.

Run: `python -m rankwise.bench.real_models --latency-budget 0.6 --models bert_base,gpt2,...`
(one JSON per model under `--out`/latency). Per model (random weights, built as in
`real_models.run_model`, batch 1, 1 thread) and per precision (fp32, bf16):
- latency budget: `decompose(format=conv format, linear_format="svd", rank=LatencyBudget(R,
  precision, batch=1, threads=1))`: each conv / linear timed on this machine at the input it
  sees (a linear at its tokens), the plan picked per layer;
- MACs budget at the same ratio R (`budget:macs=R`, same formats), the allocation by counted
  MACs;
- dense, latency-budget and MACs-budget models deployed the same way (`to_deploy`: weights and
  activations in the precision) and timed in one interleaved run (`speed_alloc.deployed_ms`,
  process CPU time, median of `rounds`): speed-up = dense ms ÷ model ms.
`real_models_report.latency_lines` renders the committed JSON for BENCHMARKS.md.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from rankwise.analysis.profile import count
from rankwise.bench.real_models_export import split_args
from rankwise.bench.speed_alloc import deployed_ms
from rankwise.bench.speed_ranks import threads_context
from rankwise.errors import LatencyTargetWarning
from rankwise.surgery.decompose import decompose
from rankwise.surgery.latency_budget import LatencyBudget
from rankwise.surgery.rank import MacsBudget

PRECISIONS = ("fp32", "bf16")


def _factorized(report: Any) -> str:
    """`"k of n"`: layers factorized, of the model's conv / linear layers."""
    rows = [r for r in report.rows if r.type in ("Conv2d", "Linear", "Conv1D")]
    return f"{sum(r.format is not None for r in rows)} of {len(rows)}"


def latency_cells(dense: torch.nn.Module, inputs: Any, entry: dict[str, Any], ratio: float,
                  precisions: tuple[str, ...] = PRECISIONS, rounds: int = 5,
                  cache_dir: str | None = None) -> dict[str, Any]:
    """`{precision: cell}` for one dense model and its batch-1 `inputs` (see the module
    docstring); each cell: dense ms, and per arm speed-up, ms, params ×, MACs ×, layers
    factorized and whether the latency target was predicted reachable."""
    args, kwargs = split_args(inputs)
    _, d_params, d_macs = count(dense, example_inputs=inputs)
    cells: dict[str, Any] = {}
    with threads_context(1):
        for prec in precisions:
            arms, models = {}, []
            budgets = {"latency": LatencyBudget(ratio=ratio, precision=prec, batch=1, threads=1,
                                                cache_dir=cache_dir),
                       "macs": MacsBudget(ratio)}
            for arm, policy in budgets.items():
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    model, report = decompose(dense, format=entry["conv"],
                                              linear_format=entry["linear"], rank=policy,
                                              example_inputs=(args, kwargs),
                                              skip_first_conv=True)
                _, params, macs = count(model, example_inputs=inputs)
                arms[arm] = {"policy": str(policy), "params_x": d_params / params,
                             "macs_x": d_macs / macs, "factorized": _factorized(report),
                             "met": not any(issubclass(w.category, LatencyTargetWarning)
                                            for w in caught)}
                models.append(model.eval())
            ms = deployed_ms([dense, *models], inputs, [prec] * 3, rounds, threads=1)
            for cell, t in zip(arms.values(), ms[1:], strict=True):
                cell.update(ms=t, speedup=ms[0] / t)
            cells[prec] = {"dense_ms": ms[0], "arms": arms}
    return cells


__all__ = ["PRECISIONS", "latency_cells"]
