"""Markdown for the speed suite's allocator cells (`speed_alloc`), and the BENCHMARKS.md section
rendered from `results/speed/allocators.json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rankwise.bench.benchmarks_md import register_section

_HEAD = ("model", "batch", "threads", "precision", "allocator", "measured speedup vs dense "
         "(same precision)", "predicted", "MACs ×", "params ×", "energy kept", "formats")


def _formats(f: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(f.items()))


def _rows(r: dict[str, Any]) -> list[str]:
    name = f"{r['model']} @{r['input_shape'][1]}²"
    onnx = r.get("runtime", "torch") == "onnxruntime"
    lead = [name, str(r["batch"]), str(r["threads"]),
            f"{r['precision']}, ONNX Runtime" if onnx else r["precision"]]
    if not r.get("measured"):
        return ["| " + " | ".join([*lead, "–", r.get("note", "not measured"), "", "", "", "",
                                   ""]) + " |"]
    out = []
    dense = f"dense {r['dense_ms']:.1f} ms"
    if "bf16_over_fp32" in r:
        dense += f" (bf16 is {r['bf16_over_fp32']:.2f}× dense fp32)"
    out.append("| " + " | ".join([*lead, "dense", dense, "", "1", "1", "1.000", ""]) + " |")
    for v in r["variants"]:
        pred = f"{v['predicted_x']:.2f}×" if "predicted_x" in v else ""
        label = v["label"] + ("" if v.get("met", True) else " (target not met)")
        if "vs_speedup" in v:
            label += f" (that MACs model in the same run: {v['vs_speedup']:.2f}×)"
        out.append("| " + " | ".join([*lead, label, f"{v['speedup']:.2f}× ({v['ms']:.1f} ms)",
                                      pred, f"{v['macs_x']:.2f}", f"{v['params_x']:.2f}",
                                      f"{v['energy']:.3f}", _formats(v["formats"])]) + " |")
    return out


def alloc_table(results: list[dict[str, Any]]) -> list[str]:
    """Table lines, one row per variant of each alloc result (dense first)."""
    lines = ["| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
    for r in results:
        lines += _rows(r)
    return lines


def _goals(results: list[dict[str, Any]]) -> list[str]:
    """One line per measured ResNet-50 cell at batch 8 (eager: against the speed goals, 1.8× in
    fp32 and 1.6× in bf16), and per ONNX Runtime ResNet-50 cell (no goal: what it reached)."""
    out = []
    for r in results:
        onnx = r.get("runtime", "torch") == "onnxruntime"
        if not r.get("measured") or r["model"] != "resnet50" or (r["batch"] != 8 and not onnx):
            continue
        lat = next(v for v in r["variants"] if v["allocator"] == "latency")
        eq = [v for v in r["variants"] if v["allocator"] == "latency-equal"]
        kept = all(v["energy"] >= v["vs_energy"] for v in eq)
        need = 1.8 if r["precision"] == "fp32" else 1.6
        goal = "" if onnx else \
            f" (goal ≥ {need}×: {'met' if lat['speedup'] >= need else 'not met'})"
        where = "fp32 in ONNX Runtime" if onnx else r["precision"]
        out.append(f"- ResNet-50 batch {r['batch']}, {r['threads']} thread(s), {where}: latency "
                   f"allocator at 0.5 → {lat['speedup']:.2f}×{goal}; at the MACs models' "
                   f"measured time it keeps {'at least' if kept else 'less than'} their energy ("
                   + ", ".join(f"{v['energy']:.3f} at {v['speedup']:.2f}× vs {v['vs_energy']:.3f} "
                               f"at {v['vs_speedup']:.2f}×" for v in eq) + ").")
    return out


def _commands(results: list[dict[str, Any]], command: str | None, date: str) -> list[str]:
    """Where the results come from: one 'Command: `…`, dates.' line, or one bullet per command
    with its dates and settings (results without their own command: `command` at `date`)."""
    seen: dict[str, list[tuple[str, str]]] = {}
    for r in results:
        cmd = r.get("command") or command
        if cmd:
            how = "onnxruntime" if r.get("runtime", "torch") == "onnxruntime" else r["precision"]
            label = f"{r['model']} b{r['batch']} t{r['threads']} {how}"
            seen.setdefault(cmd, []).append((r.get("date") or date, label))

    def dates(v: list[tuple[str, str]]) -> str:
        ds = sorted({d for d, _ in v})
        return ds[0] if len(ds) == 1 else f"{ds[0]} to {ds[-1]}"

    if len(seen) == 1:
        ((cmd, v),) = seen.items()
        return [f"Command: `{cmd}` ({dates(v)}).", ""]
    lines = [f"- `{c}` ({dates(v)}): {', '.join(label for _, label in v)}"
             for c, v in seen.items()]
    return ["Commands:", "", *lines, ""] if lines else []


def alloc_markdown(records: list[dict[str, Any]], command: str | None = None) -> str:
    """Markdown from `run_cells` records (or bare results) of alloc cells."""
    results = [r.get("result", r) for r in records if r.get("status", "done") == "done"]
    failed = [r for r in records if r.get("status", "done") != "done"]
    env = next((r.get("env") for r in records if r.get("env")), {}) or {}
    out = ["## Speed: latency-budget vs MACs-budget allocator (CPU)", ""]
    out += _commands(results, command, env.get("date", "?"))
    out += [f"torch {env.get('torch', '?')}. Random-init models; every "
            "speedup is against the dense model deployed the same way (BN folded, channels_last, "
            "fp32 or bf16 weights and activations; 'ONNX Runtime': every model, and every entry "
            "of the latency table, as a float32 ONNX graph in ONNX Runtime), timed interleaved "
            "with it (median of rounds; process CPU time at 1 thread, wall time at 2). "
            "'predicted' is the latency table's estimate. Energy kept = mean retained σ² "
            "fraction over the convs (dense 1).",
            "", *alloc_table(results), ""]
    goals = _goals(results)
    if goals:
        out += ["ResNet-50 (goals from the eager cells at batch 8):", "", *goals, ""]
    if failed:
        out += ["Failed cells:", ""] + [f"- {r['key']}: {r.get('error', '?')}" for r in failed]
        out.append("")
    return "\n".join(out)


@register_section("speed-allocators", order=40)
def section(results_root: str | Path) -> str:
    """The BENCHMARKS.md section from `results_root/speed/allocators.json` ('' if absent)."""
    path = Path(results_root) / "speed" / "allocators.json"
    if not path.is_file():
        return ""
    data = json.loads(path.read_text())
    feats = data.get("cpu_features", {})
    env = data.get("env", {})
    records = [{"status": "done", "result": r, "env": env} for r in data.get("results", [])]
    head = (f"CPU: {feats.get('cpu', '?')}, flags {', '.join(feats.get('flags', [])) or '?'}, "
            f"torch dispatch {feats.get('torch_cpu_capability', '?')}.")
    text = alloc_markdown(records, data.get("command"))
    first, _, rest = text.partition("\n\n")
    return f"{first}\n\n{head}\n\n{rest}"


__all__ = ["alloc_markdown", "alloc_table", "section"]
