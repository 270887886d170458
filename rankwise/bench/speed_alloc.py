"""The speed suite's "alloc" cells: latency-budget allocator vs MACs-budget allocator.

One cell = (model, input size, batch, threads, precision). In it, from one random-init dense
model (seeded):
- MACs allocator: `decompose(model, fmt, MacsBudget(macs_ratio))` for fmt in channel, tucker2
  (1×1 convs channel, fc dense);
- latency allocator: `latency_plan(model, convs, LatencyBudget(latency_ratio, precision, batch,
  threads))` over channel / spatial / tucker2 / dense per conv (fc dense, as in the MACs arm),
  from the cached latency table (measured on first use), built with `apply_choices`;
- equal-latency check: for each MACs model, the latency allocator again with its target set to
  that model's *measured* latency ratio (timed together with it; the target is corrected once
  if the two differ by more than 3 %), so the energies compare at equal measured time.

All models run deployed in the cell's precision (`io.export_precision.to_deploy`: BN folded,
fp32 or bf16 weights and activations, channels_last) and are timed interleaved (dense, A, B,
…, then reversed; median of `rounds`) with the process CPU-time clock at 1 thread (on a shared
core it does not count other processes' slices) and wall time otherwise. bf16 cells also time
the dense model in fp32, so the table shows what the dtype alone buys. Energy = mean over all
convs of the retained σ² fraction in the chosen format (dense = 1; random init, so a proxy of
the allocation, not of accuracy). A cell whose thread count exceeds the cores this process may
use is recorded as not measured rather than timed on an oversubscribed core.

ONNX Runtime cells (`runtime="onnxruntime"`, 1 thread, batch 1 and 8): the same comparison with
every model (and every latency-table entry) run as a float32 ONNX graph in ONNX Runtime, the
CPU deployment where a factorized model's saving is not hidden by eager PyTorch's per-op cost.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankwise.analysis.latency import onnx_runner
from rankwise.analysis.macs import Inputs, call_model
from rankwise.analysis.profile import count
from rankwise.bench.harness import Cell, environment, write_json_atomic
from rankwise.bench.speed_ranks import threads_context
from rankwise.io.export_precision import (
    cpu_features,
    precision_context,
    prepare_inputs,
    to_deploy,
)
from rankwise.models import create_model
from rankwise.surgery.decompose import decompose
from rankwise.surgery.latency_budget import (
    LatencyBudget,
    apply_choices,
    latency_plan,
    mean_energy,
)
from rankwise.surgery.latency_measure import clock_for, interleaved_ms
from rankwise.surgery.rank import MacsBudget
from rankwise.train.threads import allowed_cpus

# (model, input side, classes, batches)
ALLOC_MODELS = (("resnet50", 224, 1000, (1, 8)), ("resnet56", 32, 10, (1, 8)))
ALLOC_THREADS = (1, 2)
ALLOC_PRECISIONS = ("fp32", "bf16")
ONNX_THREADS = (1,)  # ONNX Runtime cells: the 1-thread CPU deployment
MACS_FORMATS = ("channel", "tucker2")
EQUAL_TOL = 0.03  # "equal measured latency": within 3 %


def alloc_cells(quick: bool = False) -> list[Cell]:
    """Cells for every (model, batch, threads, precision) in eager PyTorch, then the ONNX Runtime
    cells (fp32, `ONNX_THREADS`); `quick`: ResNet-50 at 112², 3 rounds."""
    cells = []
    for model, side, classes, batches in ALLOC_MODELS:
        side = 112 if quick and side == 224 else side
        settings = [(t, prec, "torch") for t in ALLOC_THREADS for prec in ALLOC_PRECISIONS]
        settings += [(t, "fp32", "onnxruntime") for t in ONNX_THREADS]
        for batch in batches:
            for threads, prec, runtime in settings:
                label = prec if runtime == "torch" else runtime
                extra = {} if runtime == "torch" else {"runtime": runtime}  # eager: as before
                cells.append(Cell(f"alloc/{model}@{side}/b{batch}/t{threads}/{label}", {
                    "kind": "alloc", "model": model, "model_kw": {}, "num_classes": classes,
                    "input_shape": [3, side, side], "batch": batch, "threads": threads,
                    "precision": prec, "macs_ratio": 0.5, "latency_ratio": 0.5,
                    "macs_formats": list(MACS_FORMATS), "rounds": 3 if quick else 5,
                    "seed": 0, "cache_dir": None, **extra}))
    return cells


# (model id, precision, onnx) → (the model, kept alive so its id is not reused; its runner)
Runners = dict[tuple[int, str, bool], tuple[nn.Module, Callable[[], object]]]


def _timed(model: nn.Module, x: Inputs, precision: str, onnx: bool = False
           ) -> Callable[[], object]:
    if onnx:  # the float32 ONNX graph in ONNX Runtime
        runner = onnx_runner(model, (), x)
        return lambda: call_model(runner, x)
    m = to_deploy(model, precision).model  # BN folded, weights in `precision`, channels_last
    xi = prepare_inputs(x, precision)

    def run() -> object:
        with precision_context(precision):
            return call_model(m, xi)

    return run


def deployed_ms(models: list[nn.Module], x: Inputs, precisions: list[str], rounds: int,
                threads: int, onnx: bool = False, runners: Runners | None = None) -> list[float]:
    """Median ms per call of each model deployed in its precision (`to_deploy`), or with `onnx`
    as float32 ONNX graphs in ONNX Runtime, the models timed in one interleaved run on inputs
    `x` (a tensor, or positional / keyword inputs such as token ids) with `threads` threads.
    `runners`: a cache (model id, precision, onnx) → deployed callable, so a model timed again
    (the dense model of every comparison) is deployed or exported once."""
    cache: Runners = {} if runners is None else runners
    fns = []
    for m, p in zip(models, precisions, strict=True):
        key = (id(m), p, bool(onnx))
        if key not in cache:
            cache[key] = (m, _timed(m, x, p, onnx))
        fns.append(cache[key][1])
    return interleaved_ms(fns, rounds=rounds, block_s=0.02, clock=clock_for(threads))


def match_measured_time(dense: nn.Module, target: nn.Module, x: Inputs, precision: str,
                        rounds: int, threads: int, ratio: float,
                        build: Callable[[float], tuple[nn.Module, Any]], onnx: bool = False,
                        runners: Runners | None = None
                        ) -> tuple[float, tuple[nn.Module, Any], list[float]]:
    """Equal measured latency: `build(ratio)` (a latency-allocated model and its plan or
    report) timed in one interleaved run with `dense` and `target`; when its time differs from
    `target`'s by more than `EQUAL_TOL`, the ratio is corrected once by the measured ratio and
    rebuilt. Returns `(corrected ratio, last build(...), [dense, target, built] ms)`.
    `dense` and `target` are deployed (or exported) once, through `runners` (`deployed_ms`)."""
    runners = {} if runners is None else runners
    for _ in range(2):
        built = build(ratio)
        t = deployed_ms([dense, target, built[0]], x, [precision] * 3, rounds, threads, onnx,
                        runners)
        if abs(t[2] / t[1] - 1.0) <= EQUAL_TOL:
            break
        ratio = min(1.0, ratio * t[1] / t[2])
    return ratio, built, t


def _macs_choices(report: Any) -> dict[str, Any]:
    return {r.name: None if r.format is None else (r.format, r.rank) for r in report.rows
            if r.type == "Conv2d"}


def summarize(label: str, allocator: str, model: nn.Module, dense: nn.Module,
             choices: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
    _, d_params, d_macs = count(dense, shape)
    _, params, macs = count(model, shape)
    formats: dict[str, int] = {}
    for c in choices.values():
        key = "dense" if c is None else c[0]
        formats[key] = formats.get(key, 0) + 1
    return {"label": label, "allocator": allocator, "macs_x": d_macs / macs,
            "params_x": d_params / params, "energy": mean_energy(dense, choices),
            "formats": formats}


def run_alloc_cell(p: dict[str, Any]) -> dict[str, Any]:
    """Run one alloc cell (see the module docstring); returns JSON-able data."""
    threads, prec, batch = int(p["threads"]), str(p["precision"]), int(p["batch"])
    runtime = str(p.get("runtime", "torch"))
    onnx = runtime == "onnxruntime"
    shape = tuple(int(s) for s in p["input_shape"])
    out: dict[str, Any] = {"kind": "alloc", "model": p["model"], "input_shape": list(shape),
                           "batch": batch, "threads": threads, "precision": prec,
                           "runtime": runtime, "macs_ratio": p["macs_ratio"],
                           "latency_ratio": p["latency_ratio"]}
    cores = len(allowed_cpus())
    if threads > cores:
        out.update(measured=False, note=f"not measured (machine busy: {cores} core(s) "
                                        f"available to this process, {threads} threads asked)")
        return out
    with threads_context(threads):
        torch.manual_seed(int(p["seed"]))
        dense = create_model(p["model"], num_classes=int(p["num_classes"]), **p["model_kw"])
        dense = dense.eval()
        x = torch.randn((batch, *shape))
        variants, models = [], []
        for fmt in p["macs_formats"]:
            m, rep = decompose(dense, fmt, MacsBudget(float(p["macs_ratio"])), input_shape=shape,
                               linear_format=None)
            variants.append(summarize(f"MACs budget {p['macs_ratio']:g}, {fmt}", "macs", m, dense,
                                     _macs_choices(rep), shape))
            models.append(m)
        base = dict(precision=prec, batch=batch, threads=threads, cache_dir=p.get("cache_dir"),
                    measure=bool(p.get("measure_table", True)), runtime=runtime)
        convs = [n for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)]
        plan = latency_plan(dense, convs, LatencyBudget(ratio=float(p["latency_ratio"]), **base),
                            shape)
        lat = apply_choices(dense, plan.choices)
        variants.append({**summarize(f"latency budget {p['latency_ratio']:g}", "latency", lat,
                                    dense, plan.choices, shape),
                         "predicted_x": plan.dense_ms / plan.predicted_ms, "met": plan.met})
        models.append(lat)
        ref = [dense] if prec == "bf16" else []  # the same dense model, timed in fp32
        precs = [prec] * (1 + len(models)) + ["fp32"] * len(ref)
        runners: Runners = {}
        ms = deployed_ms([dense, *models, *ref], x, precs, int(p["rounds"]), threads, onnx,
                         runners)
        dense_ms = ms[0]
        for v, t in zip(variants, ms[1:1 + len(models)], strict=True):
            v.update(ms=t, speedup=dense_ms / t)
        if prec == "bf16":
            out["dense_fp32_ms"] = ms[-1]
            out["bf16_over_fp32"] = ms[-1] / dense_ms
        # equal measured latency: the latency allocator at each MACs model's measured ratio,
        # timed in one interleaved run with that MACs model; one recalibration of the target
        # when the two measured times differ by more than `EQUAL_TOL`.
        def build(r: float) -> tuple[nn.Module, Any]:
            plan_r = latency_plan(dense, convs, LatencyBudget(ratio=r, **base), shape)
            return apply_choices(dense, plan_r.choices), plan_r

        eq_variants = []
        for v, macs_model in zip(variants, models[:len(p["macs_formats"])], strict=False):
            ratio, (eq_model, eq), t = match_measured_time(
                dense, macs_model, x, prec, int(p["rounds"]), threads,
                min(1.0, v["ms"] / dense_ms), build, onnx, runners)
            eq_variants.append({**summarize(f"latency budget = measured time of '{v['label']}'",
                                           "latency-equal", eq_model, dense, eq.choices, shape),
                                "vs": v["label"], "vs_energy": v["energy"], "ratio": ratio,
                                "ms": t[2], "speedup": t[0] / t[2], "vs_speedup": t[0] / t[1],
                                "met": eq.met})
    out.update(measured=True, dense_ms=dense_ms, variants=variants + eq_variants,
               latency_plan=plan.to_dict(), timer=("process CPU time" if threads == 1
                                                   else "wall time") + ", interleaved, median of "
               f"{int(p['rounds'])} rounds")
    return out


def alloc_setting(result: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies an alloc result: (model, input shape, batch, threads, precision, runtime)."""
    return (result["model"], tuple(result["input_shape"]), int(result["batch"]),
            int(result["threads"]), result["precision"], result.get("runtime", "torch"))


def write_alloc_results(results_dir: Path, records: list[dict[str, Any]], command: str) -> Path:
    """`results_dir/allocators.json`: command, machine, CPU features, torch, date, alloc results.

    The results of `records` replace those of the same setting (`alloc_setting`); results of
    other settings already in the file are kept in their order, so a run of a few cells (`match`)
    adds to the file instead of dropping what it did not run. Each result carries the `command`
    and `date` it was measured with (results of older files: the file's own)."""
    env = environment(command)
    done = [{"command": (r.get("env") or env).get("command"),
             "date": (r.get("env") or env).get("date"), **r["result"]} for r in records
            if r.get("status") == "done" and r.get("result", {}).get("kind") == "alloc"]
    path = Path(results_dir) / "allocators.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    new = {alloc_setting(r): r for r in done}
    kept = [{"command": old.get("command"), "date": old.get("env", {}).get("date"), **r}
            for r in old.get("results", []) if alloc_setting(r) not in new]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"command": command, "env": env, "cpu_features": cpu_features(),
                             "results": kept + done})
    return path


__all__ = ["ALLOC_MODELS", "ALLOC_PRECISIONS", "ALLOC_THREADS", "MACS_FORMATS", "ONNX_THREADS",
           "Runners",
           "alloc_cells", "alloc_setting",
           "deployed_ms", "match_measured_time", "run_alloc_cell", "summarize",
           "write_alloc_results"]
