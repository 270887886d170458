"""Markdown tables of the speed suite's model / layer / decomposition cells."""

from __future__ import annotations

import math
from typing import Any

from rankwise.bench.speed_ranks import CONV_FORMATS

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



__all__ = ["speed_markdown"]
