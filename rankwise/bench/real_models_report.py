"""BENCHMARKS.md section of `rankwise.bench.real_models`: rendered from the committed JSON
under `results/real_models/` (no rerun)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rankwise.bench.benchmarks_md import register_section

PATHS = ("compile", "export", "trace", "onnx", "script")
MATMUL_OPS = ("conv", "linear", "matmul", "addmm", "bmm", "mm", "einsum", "baddbmm")


def _x(num: float | None, den: float | None) -> str:
    return "–" if not num or not den else f"{num / den:.2f}×"


def _status(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "–"
    if cell.get("ok") and cell.get("max_abs_err") == 0:
        return "ok (0)"
    if cell.get("ok") and cell.get("ref_max_abs"):  # relative to the output's largest entry
        return f"ok ({cell['max_abs_err'] / cell['ref_max_abs']:.0e} rel)"
    if cell.get("ok"):
        return f"ok ({cell['max_abs_err']:.0e})"
    msg = str(cell.get("error", "?")).replace("|", "/").replace("\x1b", "")
    return "fail: " + (msg[:60] + "…" if len(msg) > 60 else msg)


@register_section("real-models", order=60)
def section(results_root: str | Path) -> str:
    """Markdown section from the JSON files under `results_root/real_models` (or
    `results_root` itself): the compression / latency / export matrix and the MACs check."""
    root = Path(results_root)
    folder = root / "real_models" if (root / "real_models").is_dir() else root
    recs = [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))]
    if not recs:
        return ""
    env = recs[0].get("environment", {})
    cmd = recs[0].get("command", "python -m rankwise.bench.real_models --out results/real_models")
    cmd = re.sub(r"--models \S+", "--models NAME", cmd)
    dates = sorted({str(r.get("date")) for r in recs if r.get("date")})
    lines = [
        "## Real models: rankwise vs tensorly-torch, latency and export",
        "",
        f"Random-weight models built from config, one process per model (`{cmd}`), "
        f"{' to '.join(dict.fromkeys([dates[0], dates[-1]])) if dates else 'undated'}; "
        f"{env.get('processor')} CPU, Python {env.get('python')}, torch {env.get('torch')}, "
        f"{env.get('threads')} thread(s). rankwise: rank `{recs[0].get('rank')}` "
        f"(format per layer type in the formats column, 1×1 convs as channel); tensorly-torch: "
        f"Tucker at the same parameter ratio per layer (grouped convs stay dense: tltorch's "
        f"FactorizedConv has no groups). Ratios are dense ÷ factorized for params and MACs (per "
        f"sample) and for batch-1 CPU latency (> 1× = faster; bf16 = autocast), medians of "
        f"timed blocks interleaving dense and factorized, 1 thread, with training jobs running "
        f"on the machine, so latency ratios are indicative only. Export cells: max abs "
        f"deviation from eager "
        f"relative to the largest output entry, or the error; compile is inductor with "
        f"`fullgraph=True`; onnx is the graph `rankwise export --format onnx` writes (float32, "
        f"dynamic batch, traced on the batch-1 example) run in ONNX Runtime.",
        "",
        "| model | library | formats | params × | MACs × | fp32 latency × | bf16 latency × | "
        + " | ".join(PATHS) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(PATHS),
    ]
    for r in recs:
        d = r["dense"]
        for lib, v in r["variants"].items():
            if "error" in v:
                lines.append(f"| {r['model']} | {lib} | fail: {v['error'][:60]} |"
                             + " |" * (6 + len(PATHS)))
                continue
            lat, dlat = v.get("latency_ms", {}), d.get("latency_ms", {})
            formats = ", ".join(f for f in v["formats"]
                                if lib != "tltorch" or f.startswith("Factorized"))
            if v.get("kept_dense"):
                formats += f" ({len(v['kept_dense'])} layers dense)"
            cells = [r["model"], lib, formats, _x(d["params"], v["params"]),
                     _x(d["macs"], v["macs"]), _x(dlat.get("fp32"), lat.get("fp32")),
                     _x(dlat.get("bf16"), lat.get("bf16"))]
            cells += [_status(v["export"].get(p)) for p in PATHS]
            if v.get("compile_backend", "inductor") != "inductor":
                cells[7] += f" [{v['compile_backend']} backend]"
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "MACs of the dense models (per sample) against fvcore:", "",
              "| model | spec | kind | MACs (rankwise) | fvcore total | fvcore / rankwise | "
              "fvcore conv+matmul / rankwise |",
              "|---|---|---|---|---|---|---|"]
    for r in recs:
        fvc, macs = r.get("fvcore") or {}, r["dense"]["macs"]
        total = fvc.get("total")
        core = sum(v for k, v in (fvc.get("by_operator") or {}).items() if k in MATMUL_OPS)
        fv = "–" if not total else f"{total / 1e9:.3f} G"
        share = "–" if not total else f"{total / macs:.3f}"
        core_share = "–" if not core else f"{core / macs:.3f}"
        lines.append(f"| {r['model']} | `{r['spec']}` | {r['kind']} | {macs / 1e9:.3f} G | {fv} | "
                     f"{share} | {core_share} |")
    lines += ["", "fvcore also counts norm and pooling elements (total); its conv+matmul part "
              "misses fused attention kernels (scaled_dot_product_attention) and, in torchvision's "
              "ViT, the projections inside nn.MultiheadAttention, which rankwise counts."]
    lines += latency_lines(folder / "latency")
    return "\n".join(lines) + "\n"


def latency_lines(folder: Path) -> list[str]:
    """Lines for the latency-budget cells (`real_models_latency`) in `folder`; none if empty."""
    recs = [json.loads(f.read_text()) for f in sorted(Path(folder).glob("*.json"))]
    if not recs:
        return []
    ratio = recs[0]["ratio"]
    dates = sorted({str(r.get("date")) for r in recs})
    lines = ["", f"Latency budget {ratio:g} against MACs budget {ratio:g} (`python -m "
             "rankwise.bench.real_models --latency-budget R`, "
             f"{' to '.join(dict.fromkeys([dates[0], dates[-1]]))}, commit "
             f"{', '.join(sorted({str(r.get('commit')) for r in recs}))}): the same random-weight "
             "models, batch 1, 1 thread, each precision deployed (`to_deploy`: weights and "
             "activations in it) and timed interleaved with dense (process CPU time, median). "
             "The latency budget times each conv / linear option on this machine at the input "
             "it sees (a linear at its tokens); the MACs budget allocates by counted MACs, same "
             "formats; the first conv stays dense. Speed-up = dense ÷ model, same precision; "
             "layers = factorized of all conv / linear layers.", "",
             "| model | precision | dense ms | latency budget: speed-up | MACs × | layers | "
             "MACs budget: speed-up | MACs × | layers |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        for prec in sorted(r["cells"], key=lambda p: (p != "fp32", p)):  # fp32 first
            c = r["cells"][prec]
            lat, mac = c["arms"]["latency"], c["arms"]["macs"]
            miss = "" if lat["met"] else " (target out of reach)"
            lines.append(f"| {r['model']} | {prec} | {c['dense_ms']:.1f} | "
                         f"{lat['speedup']:.2f}×{miss} | {lat['macs_x']:.2f} | "
                         f"{lat['factorized']} | {mac['speedup']:.2f}× | {mac['macs_x']:.2f} | "
                         f"{mac['factorized']} |")
    return lines


__all__ = ["PATHS", "latency_lines", "section"]
