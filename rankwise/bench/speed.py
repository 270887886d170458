"""`speed` suite: measured CPU latency of factorized vs dense models and layers, and the wall time
of the decompositions against tensorly's own functions.

Three kinds of cells (`Cell.params["kind"]`), all run by `run_speed_cell`:

- "model": a random-init model (resnet18/50 at 224×224, resnet20/56 at 32×32) is cut to a
  whole-model MACs target `1/ratio` (`rank.MacsBudget`, 2×/3×/4×) in one conv format; the fc stays
  dense, 1×1 convs get "channel" (surgery's rule). channel/spatial/tucker2 go through
  `rankwise.decompose`; for "cp" the same budget allocation (`rank.allocate_budget` over the
  layers' `spectra`/`cost`) picks the ranks and the layers are built with `from_spec` (fresh
  weights), because CP-ALS on every layer takes hours and latency does not depend on the values.
  The *achieved* MACs and params ratios are counted with `profile.count`, not the target.
- "layer": one 3×3 c→c conv (stride 1, pad 1) at H×W and its factorized form at the largest rank
  whose MACs are ≤ dense/ratio (`rank_for_macs`); also the latency of each sub-conv (why a format
  falls short: e.g. CP's depthwise convs do little work per byte).
- "decomp": wall seconds to decompose every conv of a random-init model (ranks from
  `rank_for_macs` at 2×): ours (`FORMAT.from_dense`: SVD, HOSVD, CP-ALS with `cp_iters` sweeps)
  vs the reference (numpy SVD, `tensorly.decomposition.partial_tucker` on modes [0, 1] with no
  HOOI sweep = HOSVD, `tensorly.decomposition.parafac` with the same rank and sweeps, tol 0).
  channel covers all convs; spatial/tucker2/cp only the k×k convs (1×1 convs are a channel SVD in
  every format). CP may time a subset (`include`) and extrapolate by Σ n·c·kh·kw·R, the per-sweep
  work of ALS; the extrapolation is reported as such.

Latency: `interleaved_latency` (eval, `no_grad`, `torch.set_num_threads(threads)` for the cell):
dense and factorized run in alternating blocks (ABBA...), median over blocks in ms, so load from
other processes hits both alike (`profile.measure_latency` times one model at a time).
`quick=True`: ImageNet models at 112×112, shorter timing, CP decomposition on layer1 only.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import statistics
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rankwise.analysis.profile import count, example_input, trace_inputs
from rankwise.bench.harness import Cell, environment, run_cells, write_json_atomic
from rankwise.errors import ConfigError, RankError
from rankwise.layers import FORMATS
from rankwise.layers.base import Rank
from rankwise.layers.shapes import ConvSpec, Pair, conv2d_macs, conv2d_params
from rankwise.models import create_model
from rankwise.surgery.decompose import decompose
from rankwise.surgery.rank import BudgetCandidate, MacsBudget, allocate_budget, to_layer_rank

IMAGENET_MODELS = ("resnet18", "resnet50")
CIFAR_MODELS = ("resnet20", "resnet56")
CONV_FORMATS = ("channel", "spatial", "tucker2", "cp")
RATIOS = (2.0, 3.0, 4.0)
BATCHES = (1, 8)
LAYERS = ((64, 56), (128, 28), (256, 14), (512, 7))  # (channels, H=W): ResNet-18's 3×3 stages
CP_SUBSET = ("conv1", "layer1.*", "layer2.*")  # ResNet-50 convs whose CP-ALS is timed in full


@contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def speed_cells(quick: bool, threads: int | None = None) -> list[Cell]:
    """All cells of the suite: single layers, CIFAR models, ImageNet models, decomposition time.

    `threads`: torch intra-op threads for every cell (default: `torch.get_num_threads()` now).
    `quick`: ImageNet models at 112×112 instead of 224×224, `min_run_time` 0.05 s instead of
    0.2 s, and CP decomposition timed on ResNet-50's layer1 only, 2 sweeps.
    """
    t = int(threads or torch.get_num_threads())
    timing = {"threads": t, "min_run_time": 0.05 if quick else 0.2, "rounds": 2,
              "batches": list(BATCHES), "timer": "interleaved-blocks"}
    side = 112 if quick else 224
    cells = []
    for c, hw in LAYERS:
        for fmt in CONV_FORMATS:
            for r in RATIOS:
                cells.append(Cell(f"layer/{c}x{hw}/{fmt}/x{r:g}", {
                    "kind": "layer", "channels": c, "hw": hw, "kernel": 3, "format": fmt,
                    "ratio": r, **timing}))
    for name in ("resnet18", *CIFAR_MODELS, "resnet50"):  # slowest last
        imagenet = name in IMAGENET_MODELS
        shape = [3, side, side] if imagenet else [3, 32, 32]
        for r in RATIOS:
            for fmt in CONV_FORMATS:
                cells.append(Cell(f"model/{name}@{shape[1]}/{fmt}/x{r:g}", {
                    "kind": "model", "model": name, "model_kw": {},
                    "num_classes": 1000 if imagenet else 10, "input_shape": shape,
                    "format": fmt, "ratio": r, "seed": 0, **timing}))
    for fmt in CONV_FORMATS:
        for impl in ("rankwise", "reference"):
            include = None
            if fmt == "cp":
                include = ["layer1.*"] if quick else list(CP_SUBSET)
            cells.append(Cell(f"decomp/resnet50/{fmt}/{impl}", {
                "kind": "decomp", "model": "resnet50", "model_kw": {}, "num_classes": 1000,
                "input_shape": [3, side, side], "format": fmt, "impl": impl, "ratio": 2.0,
                "include": include, "cp_iters": 2 if quick else 5, "seed": 0, "threads": t}))
    return cells


def run_speed_cell(cell: Cell) -> dict[str, Any]:
    """Run one cell of `speed_cells` (dispatch on `params["kind"]`); returns JSON-able data."""
    p = cell.params
    runners = {"model": _run_model, "layer": _run_layer, "decomp": _run_decomp}
    if p.get("kind") not in runners:
        raise ConfigError(f"speed cell {cell.key}: unknown kind {p.get('kind')!r}; "
                          f"expected one of {sorted(runners)}")
    with _threads(p["threads"]):
        out = runners[p["kind"]](p)
        out["threads"] = torch.get_num_threads()
    return out


# ----- ranks -------------------------------------------------------------------------------


def rank_for_macs(fmt: str, spec: ConvSpec, hw: Pair, ratio: float) -> Rank:
    """Largest rank of `fmt` whose MACs on an `hw` input are ≤ dense MACs / `ratio`.

    Tucker-2 keeps `r_in / r_out ≈ c / n`. Raises `RankError` when even rank 1 is too costly.
    """
    cls = FORMATS[fmt]
    target = conv2d_macs(spec, hw) / ratio
    limit = cls.max_rank(spec)

    def rank_at(k: int) -> Rank:
        if len(limit) == 1:
            return k
        r_in = round(k * spec.in_channels / spec.out_channels)
        return (k, max(1, min(limit[1], r_in)))

    def fits(k: int) -> bool:
        return cls.cost(spec, rank_at(k), hw)[1] <= target

    if not fits(1):
        raise RankError(f"{fmt} at rank 1 already costs more than 1/{ratio} of the dense MACs of "
                        f"conv {spec.in_channels}→{spec.out_channels} {spec.kernel_size}; "
                        "use a smaller ratio")
    lo, hi = 1, limit[0]
    while lo < hi:  # cost grows with k: bisect for the last k that fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return rank_at(lo)


def _fresh_budget(model: nn.Module, fmt: str, ratio: float, shape: Sequence[int]
                  ) -> tuple[nn.Module, dict[str, Any]]:
    """MacsBudget allocation as in `decompose`, but layers built by `from_spec` (fresh weights)."""
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    seen = trace_inputs(model, shape, convs)
    cands, info = [], []
    for name, conv in convs.items():
        if name not in seen:
            continue
        spec = ConvSpec.from_conv(conv)
        f = "channel" if spec.kernel_size == (1, 1) else fmt
        hw = (seen[name][-2], seen[name][-1])
        cls = FORMATS[f]
        spectra = list(cls.spectra(conv.weight.detach(), spec))
        cands.append(BudgetCandidate(
            name, spectra, tuple(cls.max_rank(spec)), conv2d_macs(spec, hw),
            lambda r, cls=cls, spec=spec, hw=hw: cls.cost(spec, to_layer_rank(r), hw)[1]))
        info.append((name, spec, f, hw))
    _, _, total = count(model, shape)
    fixed = total - sum(c.dense_cost for c in cands)
    ranks = allocate_budget(cands, 1.0 / ratio, "macs", fixed_cost=max(0, fixed))
    out = copy.deepcopy(model)
    chosen: dict[str, Any] = {}
    for (name, spec, f, hw), r in zip(info, ranks, strict=True):
        rank = None if r is None else to_layer_rank(r)
        if rank is not None:
            params, macs = FORMATS[f].cost(spec, rank, hw)
            if params >= conv2d_params(spec) or macs >= conv2d_macs(spec, hw):
                rank = None  # same rule as decompose: a layer that does not save stays dense
        if rank is not None:
            out.set_submodule(name, FORMATS[f].from_spec(spec, rank).train(model.training))
        chosen[name] = list(rank) if isinstance(rank, tuple) else rank
    return out, chosen


def budget_factorize(model: nn.Module, fmt: str, ratio: float, shape: Sequence[int]
                     ) -> tuple[nn.Module, dict[str, Any], str]:
    """`model` cut to whole-model MACs ≈ dense/`ratio` in conv format `fmt` (fc kept dense).

    Returns (new model, {conv name: rank or None = dense}, how the weights were made).
    """
    if fmt == "cp":
        new, ranks = _fresh_budget(model, fmt, ratio, shape)
        return new, ranks, "from_spec (fresh; ranks by MacsBudget allocation, CP-ALS skipped)"
    new, rep = decompose(model, fmt, MacsBudget(1.0 / ratio), input_shape=tuple(shape),
                         linear_format=None)
    ranks = {r.name: list(r.rank) if isinstance(r.rank, tuple) else r.rank for r in rep.rows}
    return new, ranks, "decompose (from_dense)"


# ----- latency -----------------------------------------------------------------------------


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


def _latency_rows(dense: nn.Module, fact: nn.Module, shape: Sequence[int], p: dict[str, Any],
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


# ----- runners -----------------------------------------------------------------------------


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
        "rows": _latency_rows(dense, fact, shape, p, macs_x),
    }


def _part_latency(layer: nn.Module, shape: tuple[int, ...], batch: int, min_run_time: float
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
        "rows": _latency_rows(dense, fact, shape, p, d_macs / f_macs),
        "parts_batch": big, "parts": _part_latency(fact, shape, big, p["min_run_time"]),
    }


def _decomp_reference(fmt: str, w: torch.Tensor, rank: Rank, iters: int) -> None:
    """Decompose `w (n, c, kh, kw)` with numpy / tensorly (the comparison implementation)."""
    from tensorly.decomposition import parafac, partial_tucker

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


# ----- report ------------------------------------------------------------------------------

_HEAD = ("model/layer", "format", "achieved MACs ×", "params ×", "latency dense ms",
         "latency factorized ms", "speedup", "speedup / MACs×", "batch")


def _latency_table(res: list[dict[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
    for r in res:
        for row in r["rows"]:
            lines.append("| " + " | ".join([
                r["name"], r["format"], f"{r['macs_x']:.3f}", f"{r['params_x']:.2f}",
                f"{row['dense_ms']:.3f}", f"{row['factorized_ms']:.3f}", f"{row['speedup']:.2f}",
                f"{row['speedup_per_macs_x']:.2f}", str(row["batch"])]) + " |")
    return lines


def _parts_line(r: dict[str, Any]) -> str:
    total_ms = sum(x["ms"] for x in r["parts"]) or math.nan
    total_macs = sum(x["macs"] for x in r["parts"]) or 1
    bits = []
    for x in r["parts"]:
        kind = "dw " if x["groups"] > 1 and x["groups"] == x["in"] else ""
        bits.append(f"{x['name']} {kind}{x['kernel'][0]}×{x['kernel'][1]}: "
                    f"{100 * x['ms'] / total_ms:.0f}% time / {100 * x['macs'] / total_macs:.0f}% "
                    "MACs")
    return "; ".join(bits)


def speed_markdown(results: list[dict[str, Any]]) -> str:
    """Markdown tables for BENCHMARKS.md from `run_cells` records of `speed_cells`."""
    done = [r["result"] for r in results if r.get("status") == "done"]
    failed = [r for r in results if r.get("status") != "done"]
    env = next((r.get("env") for r in results if r.get("env")), {}) or {}
    out = ["## Speed (CPU)", "",
           f"{env.get('date', '?')}, {env.get('machine', '?')}, {env.get('cpu_count', '?')} "
           f"CPUs, torch {env.get('torch', '?')}, threads "
           f"{sorted({r['threads'] for r in done}) or '?'}. Latency: median ms per forward pass "
           "(eval, no_grad), dense and factorized timed in interleaved blocks; MACs × and "
           "params × are the achieved dense / factorized ratios (whole model), not the target. "
           "On a loaded machine also read `speedup_of_min` (fastest blocks) in speed.json.",
           ""]
    models = sorted((r for r in done if r["kind"] == "model"),
                    key=lambda r: (r["name"], CONV_FORMATS.index(r["format"]), r["target_x"]))
    if models:
        out += ["### Whole models (MACs budget 2× / 3× / 4×, random init)", "",
                *_latency_table(models), ""]
        b8 = [(r, row) for r in models if "@224" in r["name"] or "@112" in r["name"]
              for row in r["rows"] if row["batch"] == 8]
        if b8:
            short = [f"{r['name'].split()[0]} {r['format']} {r['target_x']:g}× "
                     f"({row['speedup_per_macs_x']:.2f})" for r, row in b8
                     if row["speedup_per_macs_x"] < 0.8]
            out += [f"Goal speedup / MACs× ≥ 0.8 (ImageNet shapes, batch 8): "
                    f"{len(b8) - len(short)} of {len(b8)} met"
                    + (f"; short: {', '.join(short)}." if short else "."), ""]
    layers = sorted((r for r in done if r["kind"] == "layer"),
                    key=lambda r: (r["macs_dense"], CONV_FORMATS.index(r["format"]),
                                   r["target_x"]))
    if layers:
        out += ["### Single conv layers (rank: largest with MACs ≤ dense / target)", "",
                *_latency_table(layers), "",
                "Where the factorized layer's time goes (batch "
                f"{layers[0]['parts_batch']}, share of the sub-convs' summed time vs of MACs):",
                ""]
        out += [f"- {r['name']} {r['format']} {r['target_x']:g}× (rank {r['rank']}): "
                f"{_parts_line(r)}" for r in layers if r["target_x"] == 2.0]
        out.append("")
    dec = [r for r in done if r["kind"] == "decomp"]
    if dec:
        out += ["### Decomposition wall time (random-init model, ranks at 2× MACs per layer)", "",
                "| model | format | layers | ours | ours s | reference | reference s | "
                "reference / ours (> 1: ours faster) |", "|---|---|---|---|---|---|---|---|"]
        by = {(r["model"], r["format"], r["impl"]): r for r in dec}
        for (model, fmt, impl), r in sorted(by.items()):
            if impl != "rankwise":
                continue
            ref = by.get((model, fmt, "reference"))

            def secs(x: dict[str, Any] | None) -> str:
                if x is None:
                    return "–"
                s = f"{x['seconds']:.1f}"
                if x["extrapolated"] and x["extrapolated_seconds"] is not None:
                    s += f" (all layers, extrapolated: {x['extrapolated_seconds']:.0f})"
                return s

            ratio = f"{ref['seconds'] / r['seconds']:.2f}" if ref and r["seconds"] else "–"
            out.append(f"| {model} | {fmt} | {r['layers_timed']} of {r['layers_total']} | "
                       f"{r['algorithm']} | {secs(r)} | {ref['algorithm'] if ref else '–'} | "
                       f"{secs(ref)} | {ratio} |")
        out += ["", "channel covers every conv; spatial / tucker2 / cp the k×k convs only (1×1 "
                "convs are a channel SVD in every format: add the channel row's 1×1 share). "
                "Extrapolated values scale the timed subset by Σ n·c·kh·kw·R (per-sweep ALS "
                "work).", ""]
    if failed:
        out += ["### Failed cells", ""] + [f"- {r['key']}: {r.get('error', '?')}" for r in failed]
        out.append("")
    return "\n".join(out)


def run_speed_suite(out_dir: str | Path, quick: bool = False, threads: int | None = None,
                    resume: bool = True, cells: list[Cell] | None = None) -> Path:
    """Run (resuming) the speed cells into `out_dir/cells/`, rewriting `out_dir/speed.md` and
    `out_dir/speed.json` after every cell; returns the path of `speed.md`."""
    out_dir = Path(out_dir)
    cells = speed_cells(quick, threads) if cells is None else cells
    md, js = out_dir / "speed.md", out_dir / "speed.json"
    results: list[dict[str, Any]] = []
    for i, cell in enumerate(cells):
        rec = run_cells([cell], run_speed_cell, out_dir, resume=resume, progress=False,
                        command="rankwise.bench.speed.run_speed_suite")[0]
        results.append(rec)
        print(f"[{i + 1}/{len(cells)}] {cell.key}: {rec['status']} ({rec['seconds']:.1f} s)",
              flush=True)
        write_json_atomic(js, {"env": environment("rankwise.bench.speed.run_speed_suite"),
                               "results": results})
        tmp = md.with_suffix(".md.tmp")
        tmp.write_text(speed_markdown(results))
        tmp.replace(md)
    return md


__all__ = ["budget_factorize", "interleaved_latency", "rank_for_macs", "run_speed_cell",
           "run_speed_suite", "speed_cells", "speed_markdown"]
