"""fp32 vs bf16 training on CPU, from committed run records (`results/precision/<run>/`).

Each run folder holds the `config.json`, `metrics.jsonl` and `summary.json` that `rankwise train`
wrote; the section compares runs that differ only in `train.precision`: final test accuracy and
the median epoch wall time (train + eval), with the ratio against the fp32 run of the same CPU
(`summary.json`'s `machine`; runs from before it was recorded form one group).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from rankwise.analysis.precision import BF16_CPU_FLAGS
from rankwise.bench.benchmarks_md import register_section


def read_run(folder: Path) -> dict[str, Any]:
    """Settings and measured numbers of one recorded run."""
    config = json.loads((folder / "config.json").read_text())
    epochs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
              if '"event": "epoch"' in line]
    train, data = config.get("train", {}), config.get("dataset", {})
    summary = folder / "summary.json"
    machine = (json.loads(summary.read_text()) if summary.is_file() else {}).get("machine")
    return {"name": folder.name, "cpu": cpu_label(machine),
            "precision": train.get("precision", "fp32"),
            "epochs": len(epochs), "acc": 100 * float(epochs[-1]["test_acc"]),
            "epoch_s": statistics.median(float(e["time_s"]) for e in epochs),
            "threads": train.get("num_threads"), "channels_last": train.get("channels_last"),
            "model": config.get("model", {}).get("name"),
            "dataset": config.get("dataset", {}).get("name"),
            "settings": (f"{train.get('epochs')} epochs {train.get('schedule')}, lr "
                         f"{train.get('lr')}, wd {train.get('weight_decay')}, batch "
                         f"{train.get('batch_size')}, seed {train.get('seed')}"
                         + "".join(f", first {n} {split} images" for split, n in (
                             ("training", data.get("limit_train")),
                             ("test", data.get("limit_test"))) if n))}


def cpu_label(machine: dict[str, Any] | None) -> str:
    """`"AMD EPYC, AVX2"`, `"…, AVX512 + avx512_bf16"`: the CPU and its bf16 instructions."""
    if not machine:
        return "not recorded"
    bf16 = [f for f in machine.get("flags", []) if f in BF16_CPU_FLAGS]
    return ", ".join([str(machine.get("cpu")), " + ".join(
        [str(machine.get("torch_cpu_capability")), *bf16])])


@register_section("precision", order=15)
def section(results_root: Path) -> str:
    """Markdown table of `results_root/precision/*/` (empty when there is none)."""
    folders = sorted(p for p in (Path(results_root) / "precision").glob("*") if p.is_dir())
    runs = [read_run(p) for p in folders]
    if not runs:
        return ""
    fp32 = {r["cpu"]: r for r in runs if r["precision"] == "fp32"}
    lines = ["## Training precision by CPU: fp32 vs bf16 autocast", "",
             "Same model, data, seed and schedule; bf16 = `--precision bf16` (autocast, fp32 "
             "master weights). Epoch time = median wall seconds of train + test evaluation; "
             "speed against the fp32 run on the same CPU.", "",
             "| run | CPU | model | precision | threads | epochs | test acc % | epoch s | "
             "speed × fp32 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        base = fp32.get(r["cpu"])
        speed = f"{base['epoch_s'] / r['epoch_s']:.2f}" if base else "–"
        lines.append(f"| {r['name']} | {r['cpu']} | {r['model']} ({r['dataset']}) | "
                     f"{r['precision']} | {r['threads']} | {r['epochs']} | {r['acc']:.2f} | "
                     f"{r['epoch_s']:.1f} | {speed} |")
    lines += ["", "Settings: " + "; ".join(sorted({r["settings"] for r in runs})) + ". Runs: "
              "`rankwise train --model MODEL --dataset DATASET` with those flags and "
              "`--precision fp32|bf16 --channels-last --num-threads 1`, on one core while the "
              "other core ran another training.", ""]
    return "\n".join(lines)
