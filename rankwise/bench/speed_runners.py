"""Runners of the speed suite's "model", "layer" and "decomp" cells (see `rankwise.bench.speed`)."""

from __future__ import annotations

import fnmatch
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from rankwise.analysis.profile import count, trace_inputs
from rankwise.bench.speed_ranks import CONV_FORMATS, budget_factorize, rank_for_macs
from rankwise.bench.speed_timing import latency_rows, part_latency
from rankwise.errors import ConfigError
from rankwise.layers import FORMATS
from rankwise.layers.base import Rank
from rankwise.layers.shapes import ConvSpec, conv2d_macs, conv2d_params
from rankwise.models import create_model


def _conv_macs(rows: list[Any]) -> int:
    return sum(r.macs for r in rows if r.type == "Conv2d" or r.format in CONV_FORMATS)


def _run_model(p: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(int(p["seed"]))
    shape = tuple(int(s) for s in p["input_shape"])
    dense = create_model(p["model"], num_classes=int(p["num_classes"]), **p["model_kw"]).eval()
    start = time.perf_counter()
    fact, ranks, init = budget_factorize(dense, p["format"], float(p["ratio"]), shape)
    seconds = time.perf_counter() - start
    fact.eval()
    d_rows, d_params, d_macs = count(dense, shape)
    f_rows, f_params, f_macs = count(fact, shape)
    macs_x = d_macs / f_macs
    return {
        "kind": "model", "name": f"{p['model']} @{shape[1]}×{shape[2]}", "format": p["format"],
        "target_x": float(p["ratio"]), "init": init, "decompose_seconds": seconds,
        "macs_dense": d_macs, "macs_factorized": f_macs, "macs_x": macs_x,
        "conv_macs_x": _conv_macs(d_rows) / _conv_macs(f_rows),
        "params_dense": d_params, "params_factorized": f_params, "params_x": d_params / f_params,
        "kept_dense": sum(r is None for r in ranks.values()), "ranks": ranks,
        "rows": latency_rows(dense, fact, shape, p, macs_x),
    }



def _run_layer(p: dict[str, Any]) -> dict[str, Any]:
    c, hw, k, fmt = int(p["channels"]), int(p["hw"]), int(p["kernel"]), p["format"]
    spec = ConvSpec(c, c, (k, k), padding=(k // 2, k // 2), bias=False)
    rank = rank_for_macs(fmt, spec, (hw, hw), float(p["ratio"]))
    torch.manual_seed(0)
    dense = spec.make().eval()
    fact = FORMATS[fmt].from_spec(spec, rank).eval()
    f_params, f_macs = FORMATS[fmt].cost(spec, rank, (hw, hw))
    d_macs = conv2d_macs(spec, (hw, hw))
    shape = (c, hw, hw)
    big = max(int(b) for b in p["batches"])
    return {
        "kind": "layer", "name": f"{k}×{k} {c}→{c} @{hw}²", "format": fmt,
        "target_x": float(p["ratio"]), "rank": list(rank) if isinstance(rank, tuple) else rank,
        "macs_dense": d_macs, "macs_factorized": f_macs, "macs_x": d_macs / f_macs,
        "params_dense": conv2d_params(spec), "params_factorized": f_params,
        "params_x": conv2d_params(spec) / f_params,
        "rows": latency_rows(dense, fact, shape, p, d_macs / f_macs),
        "parts_batch": big, "parts": part_latency(fact, shape, big, p["min_run_time"]),
    }


def _decomp_reference(fmt: str, w: torch.Tensor, rank: Rank, iters: int) -> None:
    """Decompose `w (n, c, kh, kw)` with numpy / tensorly (the comparison implementation)."""
    try:
        from tensorly.decomposition import parafac, partial_tucker
    except ImportError as e:
        raise ConfigError("the decomposition-speed cells compare against tensorly: pip install "
                          "'rankwise[tensorly]' (or run --kinds layer,model,alloc)") from e

    n, c, kh, kw = w.shape
    if fmt in ("channel", "spatial"):
        m = w.reshape(n, -1) if fmt == "channel" else w.permute(0, 3, 1, 2).reshape(n * kw, -1)
        u, s, vh = np.linalg.svd(m.numpy(), full_matrices=False)
        root = np.sqrt(s[:rank])
        _ = (u[:, :rank] * root, root[:, None] * vh[:rank])
    elif fmt == "tucker2":
        partial_tucker(w.double().numpy(), rank=list(rank), modes=[0, 1], n_iter_max=0,
                       init="svd")
    else:
        parafac(w.double().numpy(), int(rank), n_iter_max=iters, init="svd", tol=0.0)


def _run_decomp(p: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(int(p["seed"]))
    shape = tuple(int(s) for s in p["input_shape"])
    fmt, impl, iters = p["format"], p["impl"], int(p["cp_iters"])
    model = create_model(p["model"], num_classes=int(p["num_classes"]), **p["model_kw"])
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    seen = trace_inputs(model, shape, convs)
    layers = []  # (name, conv, rank, work = numel·R), every conv of the format
    for name, conv in convs.items():
        spec = ConvSpec.from_conv(conv)
        if name not in seen or (fmt != "channel" and spec.kernel_size == (1, 1)):
            continue
        rank = rank_for_macs(fmt, spec, (seen[name][-2], seen[name][-1]), float(p["ratio"]))
        work = conv.weight.numel() * (rank if isinstance(rank, int) else max(rank))
        layers.append((name, conv, rank, work))
    include = p.get("include")
    timed = [x for x in layers if include is None or any(fnmatch.fnmatchcase(x[0], pat)
                                                         for pat in include)]
    per_layer, total = {}, 0.0

    def decompose_one(conv: nn.Conv2d, rank: Rank) -> None:
        if impl == "rankwise":
            opts = {"n_iter_max": iters, "tol": 0.0} if fmt == "cp" else {}
            FORMATS[fmt].from_dense(conv, rank, **opts)
        else:
            _decomp_reference(fmt, conv.weight.detach(), rank, iters)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tensorly warns when R exceeds a mode size
        small = nn.Conv2d(4, 4, 3, bias=False)  # untimed warm-up: lazy imports, LAPACK loading
        decompose_one(small, (2, 2) if fmt == "tucker2" else 2)
        for name, conv, rank, _ in timed:
            start = time.perf_counter()
            decompose_one(conv, rank)
            per_layer[name] = time.perf_counter() - start
            total += per_layer[name]
    work_all, work_timed = sum(x[3] for x in layers), sum(x[3] for x in timed)
    kxk = sum(s for (n, c, _, _), s in zip(timed, per_layer.values(), strict=True)
              if c.kernel_size != (1, 1))
    algo = {"channel": "truncated SVD", "spatial": "truncated SVD", "tucker2": "HOSVD",
            "cp": f"CP-ALS, {iters} sweeps, SVD init"}[fmt]
    ref = {"channel": "numpy.linalg.svd", "spatial": "numpy.linalg.svd",
           "tucker2": "tensorly partial_tucker(modes=[0,1], n_iter_max=0)",
           "cp": f"tensorly parafac(n_iter_max={iters}, tol=0, init='svd')"}[fmt]
    return {
        "kind": "decomp", "model": p["model"], "format": fmt, "impl": impl,
        "algorithm": algo if impl == "rankwise" else ref,
        "layers_total": len(layers), "layers_timed": len(timed), "seconds": total,
        "seconds_kxk": kxk, "seconds_1x1": total - kxk,
        "extrapolated_seconds": total * work_all / work_timed if work_timed else None,
        "extrapolated": len(timed) < len(layers), "include": include,
        "per_layer_seconds": per_layer,
    }



RUNNERS = {"model": _run_model, "layer": _run_layer, "decomp": _run_decomp}

__all__ = ["RUNNERS"]
