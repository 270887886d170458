"""fp32 vs bf16 training on CPU, from committed run records (`results/precision/<run>/`).

Each run folder holds the `config.json`, `metrics.jsonl` and `summary.json` that `rankwise train`
wrote; the section compares runs that differ only in `train.precision`: final test accuracy and
the median epoch wall time (train + eval), with the ratio against the fp32 run.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from rankwise.bench.benchmarks_md import register_section


def read_run(folder: Path) -> dict[str, Any]:
    """Settings and measured numbers of one recorded run."""
    config = json.loads((folder / "config.json").read_text())
    epochs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
              if '"event": "epoch"' in line]
    train = config.get("train", {})
    return {"name": folder.name, "precision": train.get("precision", "fp32"),
            "epochs": len(epochs), "acc": 100 * float(epochs[-1]["test_acc"]),
            "epoch_s": statistics.median(float(e["time_s"]) for e in epochs),
            "threads": train.get("num_threads"), "channels_last": train.get("channels_last"),
            "model": config.get("model", {}).get("name"),
            "dataset": config.get("dataset", {}).get("name"),
            "settings": (f"{train.get('epochs')} epochs {train.get('schedule')}, lr "
                         f"{train.get('lr')}, wd {train.get('weight_decay')}, batch "
                         f"{train.get('batch_size')}, seed {train.get('seed')}")}


@register_section("precision", order=15)
def section(results_root: Path) -> str:
    """Markdown table of `results_root/precision/*/` (empty when there is none)."""
    folders = sorted(p for p in (Path(results_root) / "precision").glob("*") if p.is_dir())
    runs = [read_run(p) for p in folders]
    if not runs:
        return ""
    fp32 = next((r for r in runs if r["precision"] == "fp32"), None)
    lines = ["## Training precision on this CPU: fp32 vs bf16 autocast", "",
             "Same model, data, seed and schedule; bf16 = `--precision bf16` (autocast, fp32 "
             "master weights). Epoch time = median wall seconds of train + test evaluation.", "",
             "| run | model | precision | threads | epochs | test acc % | epoch s | speed × fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        speed = f"{fp32['epoch_s'] / r['epoch_s']:.2f}" if fp32 else "–"
        lines.append(f"| {r['name']} | {r['model']} ({r['dataset']}) | {r['precision']} | "
                     f"{r['threads']} | {r['epochs']} | {r['acc']:.2f} | {r['epoch_s']:.1f} | "
                     f"{speed} |")
    lines += ["", "Settings: " + "; ".join(sorted({r["settings"] for r in runs})) + ". Runs: "
              "`rankwise train --model MODEL --dataset DATASET` with those flags and "
              "`--precision fp32|bf16 --channels-last --num-threads 1`, on one core while the "
              "other core ran another training.", ""]
    return "\n".join(lines)
