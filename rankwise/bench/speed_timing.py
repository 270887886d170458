"""Interleaved latency timing for the speed suite (dense and factorized in alternating blocks)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rankwise.analysis.profile import example_input, trace_inputs
from rankwise.layers.shapes import ConvSpec, conv2d_macs


def interleaved_latency(models: Sequence[nn.Module], inputs: Sequence[torch.Tensor],
                        min_run_time: float, rounds: int) -> list[dict[str, float]]:
    """Latency (ms) of `models[i](inputs[i])`, eval mode, `no_grad`, timed in interleaved blocks.

    After a warm-up (≥ 3 runs and `min_run_time / 4` s each), every block runs each model `k_i`
    times back to back (`k_i` ≈ `min_run_time / 10` s of work) and records the mean; the order is
    reversed on every other block (ABBA...), so background load hits all models alike. Blocks
    continue until each model has ≥ `5·rounds` blocks and ≥ `rounds·min_run_time` s. Returns per
    model `median_ms`, `iqr_ms`, `min_ms` over blocks and `blocks`.
    """
    def once(i: int) -> float:
        start = time.perf_counter()
        models[i](inputs[i])
        return time.perf_counter() - start

    flags = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        with torch.no_grad():
            reps = []
            for i in range(len(models)):
                start, n, last = time.perf_counter(), 0, 0.0
                while n < 3 or time.perf_counter() - start < min_run_time / 4:
                    last, n = once(i), n + 1
                reps.append(max(1, math.ceil(min_run_time / 10 / max(last, 1e-7))))
            times: list[list[float]] = [[] for _ in models]
            spent = [0.0] * len(models)
            block = 0
            while min(len(t) for t in times) < 5 * rounds or min(spent) < rounds * min_run_time:
                order = range(len(models)) if block % 2 == 0 else reversed(range(len(models)))
                for i in order:
                    total = sum(once(i) for _ in range(reps[i]))
                    times[i].append(total / reps[i])
                    spent[i] += total
                block += 1
    finally:
        for m, flag in flags:
            m.training = flag
    out = []
    for t in times:
        q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0]] * 3
        out.append({"median_ms": 1e3 * statistics.median(t), "iqr_ms": 1e3 * (q[2] - q[0]),
                    "min_ms": 1e3 * min(t), "blocks": len(t)})
    return out


def latency_rows(dense: nn.Module, fact: nn.Module, shape: Sequence[int], p: dict[str, Any],
                  macs_x: float) -> list[dict[str, Any]]:
    rows = []
    for bs in p["batches"]:
        x = example_input(dense, shape, batch=int(bs))
        d, f = interleaved_latency([dense, fact], [x, x], p["min_run_time"], p["rounds"])
        speedup = d["median_ms"] / f["median_ms"]
        rows.append({"batch": int(bs), "dense_ms": d["median_ms"], "factorized_ms": f["median_ms"],
                     "dense_iqr_ms": d["iqr_ms"], "factorized_iqr_ms": f["iqr_ms"],
                     "dense_min_ms": d["min_ms"], "factorized_min_ms": f["min_ms"],
                     "speedup": speedup, "speedup_per_macs_x": speedup / macs_x,
                     "speedup_of_min": d["min_ms"] / f["min_ms"]})
    return rows



def part_latency(layer: nn.Module, shape: tuple[int, ...], batch: int, min_run_time: float
                  ) -> list[dict[str, Any]]:
    """Latency and MACs of each sub-conv of a factorized layer on the input it really gets."""
    parts = {n: m for n, m in layer.named_children() if isinstance(m, nn.Conv2d)}
    seen = trace_inputs(layer, shape, parts)
    inputs = [example_input(conv, seen[name][1:], batch=batch) for name, conv in parts.items()]
    lat = interleaved_latency(list(parts.values()), inputs, min_run_time, 1)
    out = []
    for (name, conv), x, t in zip(parts.items(), inputs, lat, strict=True):
        spec = ConvSpec.from_conv(conv)
        out.append({"name": name, "kernel": list(spec.kernel_size), "groups": spec.groups,
                    "in": spec.in_channels, "out": spec.out_channels,
                    "macs": conv2d_macs(spec, (x.shape[-2], x.shape[-1])), "ms": t["median_ms"]})
    return out



__all__ = ["interleaved_latency", "latency_rows", "part_latency"]
