"""Accuracy after fine-tuning at equal measured latency: the latency allocator against the MACs
allocator on a trained CIFAR-10 model.

Inputs: a trained dense run (`--dense`) and a finished `rankwise decompose --finetune N` run of
it with a MACs budget (`--macs-run`, e.g. the `cifar10` suite's `decomp-nc-ft` row: channel
format, `budget:macs=0.461`). Then:

1. the dense model and the MACs run's model are deployed in `precision`
   (`io.export_precision.to_deploy`) and timed interleaved at `batch`, 1 thread → ratio L;
2. `decompose(dense, rank=LatencyBudget(ratio=L, precision, batch, threads=1))` (first conv kept,
   like the MACs run); timed against the MACs model in one interleaved run, the target is
   corrected once when the two differ by more than `EQUAL_TOL`;
3. that latency model is fine-tuned with the MACs run's recipe (its report's `train_config`) by
   `decompose_and_finetune`, on the MACs run's dataset and seed;
4. `--out`/result.json: per arm the measured ms and speedup, MACs and params reductions, energy
   (mean over the 3×3/1×1 convs but the first of the retained σ² fraction of the trained dense
   weights in the chosen format; kept dense = 1), test accuracy right after the decomposition
   and after fine-tuning, plus command, machine and date.

Run: `python -m rankwise.bench.alloc_accuracy --dense runs/cifar10/r20-dense
--macs-run runs/cifar10/r20-decomp-nc-ft --out runs/cifar10/r20-alloc-latency`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankwise.bench.benchmarks_md import register_section
from rankwise.bench.harness import environment, write_json_atomic
from rankwise.bench.speed_alloc import Runners, deployed_ms, match_measured_time, summarize
from rankwise.io.model_file import load
from rankwise.surgery.decompose import decompose
from rankwise.surgery.latency_budget import LatencyBudget


def conv_choices(model: nn.Module, report: dict[str, Any] | Any) -> dict[str, Any]:
    """`{conv name: (format, rank) or None}` from a decompose report (dict or object), over
    every Conv2d row but a kept first conv (`skip_first_conv`)."""
    rows = report["rows"] if isinstance(report, dict) else [vars(r) for r in report.rows]
    out: dict[str, Any] = {}
    for r in rows:
        if r.get("type") != "Conv2d" or "first conv" in str(r.get("note") or ""):
            continue
        fmt, rank = r.get("format"), r.get("rank")
        out[r["name"]] = None if fmt is None else (fmt, rank if isinstance(rank, int)
                                                   else tuple(rank))
    return out


def match_latency(dense: nn.Module, macs_model: nn.Module, shape: tuple[int, ...],
                  precision: str, batch: int, rounds: int = 7, measure: bool = True,
                  runtime: str = "torch") -> tuple[LatencyBudget, nn.Module, Any, list[float]]:
    """The latency budget whose allocator model times like `macs_model` (within `EQUAL_TOL`
    after at most one correction); returns `(budget, model, report, [dense, macs, latency]
    ms)`. `measure=False`: the allocator uses the analytic table (tests). `runtime`
    "onnxruntime": every model timed, and the allocator's table measured, as float32 ONNX
    graphs in ONNX Runtime (`precision` must be fp32)."""
    onnx = runtime == "onnxruntime"
    x = torch.randn((batch, *shape))
    runners: Runners = {}  # dense and MACs model deployed / exported once
    t = deployed_ms([dense, macs_model], x, [precision] * 2, rounds, 1, onnx, runners)

    def build(ratio: float) -> tuple[nn.Module, tuple[LatencyBudget, Any]]:
        policy = LatencyBudget(ratio=ratio, precision=precision, batch=batch, threads=1,
                               measure=measure, runtime=runtime)
        lat, rep = decompose(dense, format="channel", rank=policy, input_shape=shape,
                             linear_format=None, skip_first_conv=True)
        return lat, (policy, rep)

    _, (lat, (policy, rep)), t = match_measured_time(dense, macs_model, x, precision, rounds, 1,
                                                     min(1.0, t[1] / t[0]), build, onnx,
                                                     runners)
    return policy, lat, rep, t


def run(dense_dir: Path, macs_dir: Path, out: Path, precision: str, batch: int,
        command: str, rounds: int = 7, measure: bool = True,
        runtime: str = "torch") -> dict[str, Any]:
    """Steps 1–4 of the module docstring; returns the result record (also written)."""
    from rankwise.train import TrainConfig
    from rankwise.train.pretrain import decompose_and_finetune
    from rankwise.train.runspec import load_split

    torch.set_num_threads(1)
    macs_report = json.loads((macs_dir / "decompose_report.json").read_text())
    dense = load(dense_dir).eval()
    macs_model = load(macs_dir).eval()
    spec = macs_report["dataset"]
    train_data = load_split(spec, True, limit=spec.get("limit_train"))
    test_data = load_split(spec, False, limit=spec.get("limit_test"))
    shape = tuple(train_data.shape)
    policy, lat, rep, t = match_latency(dense, macs_model, shape, precision, batch, rounds,
                                        measure, runtime)
    ratio = float(policy.ratio)
    ft = dict(macs_report["finetune"]["train_config"])
    epochs = int(ft.pop("epochs"))
    cfg = TrainConfig(epochs=epochs, **{k: v for k, v in ft.items()
                                        if k in TrainConfig.__dataclass_fields__})
    arch = json.loads((dense_dir / "model.json").read_text())
    meta = {"model": {"name": arch.get("arch"), "kwargs": arch.get("arch_kwargs", {})},
            "dataset": spec, "method": "decompose+finetune (latency allocator)"}
    _, data = decompose_and_finetune(dense, train_data, test_data, format="channel", rank=policy,
                                     epochs=epochs, train_cfg=cfg, out_dir=out, meta=meta,
                                     linear_format=None, skip_first_conv=True)
    arms = [
        {**summarize(f"MACs allocator ({macs_report['format']}, {macs_report['policy']})",
                     "macs", macs_model, dense, conv_choices(macs_model, macs_report), shape),
         "ms": t[1], "speedup": t[0] / t[1],
         "acc_decomposed": 100 * macs_report["accuracy"]["decomposed"],
         "acc_finetuned": 100 * macs_report["accuracy"]["finetuned"]},
        {**summarize(f"latency allocator (budget:latency={ratio:.4f})", "latency", lat, dense,
                     conv_choices(lat, rep), shape),
         "ms": t[2], "speedup": t[0] / t[2],
         "acc_decomposed": 100 * data["accuracy"]["decomposed"],
         "acc_finetuned": 100 * data["accuracy"]["finetuned"]},
    ]
    record = {"command": command, "env": environment(command), "precision": precision,
              "runtime": runtime,
              "batch": batch, "threads": 1, "dense_ms": t[0],
              "dense_acc": 100 * macs_report["accuracy"]["before"],
              "finetune": {"epochs": epochs, **{k: cfg.__dict__[k] for k in
                                                ("lr", "schedule", "precision", "seed")}},
              "dense_run": str(dense_dir), "macs_run": str(macs_dir), "arms": arms}
    write_json_atomic(out / "result.json", record)
    return record


RESULT_FILE = Path("speed") / "alloc_accuracy.json"
"""Where the committed copy of `--out/result.json` lives under the results root (eager
PyTorch); the ONNX Runtime record sits beside it as `alloc_accuracy_onnxruntime.json`."""
RESULT_FILES = (RESULT_FILE, RESULT_FILE.with_name("alloc_accuracy_onnxruntime.json"))


def markdown(rec: dict[str, Any]) -> str:
    """The table of one result record: both arms side by side."""
    ft = rec["finetune"]
    onnx = rec.get("runtime", "torch") == "onnxruntime"
    where = "as float32 ONNX graphs in ONNX Runtime" if onnx else f"deployed in {rec['precision']}"
    lines = [
        "### Equal measured latency on CIFAR-10: accuracy after fine-tuning"
        + (" (ONNX Runtime)" if onnx else ""), "",
        f"Trained ResNet-20 `{rec['dense_run']}` (dense {rec['dense_acc']:.2f} %); the MACs "
        f"allocator's run `{rec['macs_run']}` and the latency allocator at its measured time, "
        f"{where} at batch {rec['batch']}, {rec['threads']} thread "
        f"(dense {rec['dense_ms']:.2f} ms); both fine-tuned {ft['epochs']} epochs, lr "
        f"{ft['lr']} {ft['schedule']}, {ft['precision']}, seed {ft['seed']}. Energy: mean "
        "retained σ² of the trained weights over the convs but the first (kept dense = 1).", "",
        "| allocator | measured speedup | MACs × | params × | energy | acc decomposed % "
        "| acc fine-tuned % | formats |", "|---|---|---|---|---|---|---|---|"]
    for a in rec["arms"]:
        fm = ", ".join(f"{k} {v}" for k, v in sorted(a["formats"].items()))
        lines.append(f"| {a['label']} | {a['speedup']:.2f}× | {a['macs_x']:.2f} | "
                     f"{a['params_x']:.2f} | {a['energy']:.3f} | {a['acc_decomposed']:.2f} | "
                     f"{a['acc_finetuned']:.2f} | {fm} |")
    macs_arm, lat_arm = rec["arms"][0], rec["arms"][1]
    if set(lat_arm["formats"]) == {"dense"} and macs_arm["speedup"] <= 1.0:
        lines += ["", f"Reading: the MACs allocator's model runs {macs_arm['speedup']:.2f}× the "
                  "dense model's speed here: its measured time is above the dense time, a budget "
                  "the dense network already meets, so the latency allocator keeps every layer "
                  "dense: more energy and accuracy at the same or less time."]
    env = rec.get("env", {})
    lines += ["", f"Command: `{rec['command']}` (commit {env.get('git_commit', '?')}, "
              f"{env.get('date', '?')})."]
    return "\n".join(lines) + "\n"


@register_section("speed-alloc-accuracy", order=41)
def section(results_root: str | Path) -> str:
    """BENCHMARKS.md hook: `results_root/speed/alloc_accuracy*.json` ('' when absent)."""
    paths = [Path(results_root) / f for f in RESULT_FILES]
    return "\n".join(markdown(json.loads(p.read_text())) for p in paths if p.is_file())


def main(argv: list[str] | None = None) -> int:
    """`python -m rankwise.bench.alloc_accuracy --dense D --macs-run M --out O`."""
    p = argparse.ArgumentParser(prog="python -m rankwise.bench.alloc_accuracy",
                                description=__doc__.splitlines()[0])
    p.add_argument("--dense", type=Path, required=True, help="trained dense run directory")
    p.add_argument("--macs-run", type=Path, required=True,
                   help="finished `rankwise decompose --finetune` run of it (MACs budget)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="deployed precision (default bf16; fp32 with --runtime onnxruntime)")
    p.add_argument("--runtime", choices=("torch", "onnxruntime"), default="torch")
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args(argv)
    precision = a.precision or ("fp32" if a.runtime == "onnxruntime" else "bf16")
    command = shlex.join(["python", "-m", "rankwise.bench.alloc_accuracy",
                          *(sys.argv[1:] if argv is None else argv)])
    rec = run(a.dense, a.macs_run, a.out, precision, a.batch, command, runtime=a.runtime)
    for arm in rec["arms"]:
        print(f"{arm['label']}: {arm['speedup']:.2f}x measured, energy {arm['energy']:.3f}, "
              f"acc {arm['acc_decomposed']:.2f} -> {arm['acc_finetuned']:.2f}")
    return 0


__all__ = ["RESULT_FILE", "RESULT_FILES", "conv_choices", "markdown", "match_latency", "run",
           "section"]

if __name__ == "__main__":
    raise SystemExit(main())
