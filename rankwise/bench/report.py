"""Turn benchmark cell results into a Markdown table and Pareto plots.

A cell's `result` carries: `group` (e.g. "fashion-mnist/smallcnn"), `method`, `level` (a label
for the compression target, "-" for dense), `seed`, `acc` (test accuracy, %), `params`, `macs`,
`latency_ms` (batch-1 median, optional), `train_seconds`. The dense row of the same group is the
reference for Δ accuracy and the × ratios.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Row:
    group: str
    method: str
    level: str
    n_seeds: int
    acc_mean: float
    acc_std: float
    d_acc: float | None
    params: float
    macs: float
    latency_ms: float | None
    params_x: float | None
    macs_x: float | None
    latency_x: float | None
    train_seconds: float | None
    extra: dict[str, Any]


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.fmean(xs) if xs else None


def _latency_ratio(rs: list[dict[str, Any]], dense_ms: float | None,
                   ms: float | None) -> float | None:
    """Dense / compressed latency: from interleaved pairs (`latency_ref_ms`) when the cells
    timed their own dense reference alongside, else from the dense row."""
    pairs = [x["latency_ref_ms"] / x["latency_ms"] for x in rs
             if x.get("latency_ref_ms") and x.get("latency_ms")]
    if pairs:
        return statistics.fmean(pairs)
    return dense_ms / ms if dense_ms and ms else None


def summarize(results: list[dict[str, Any]]) -> list[Row]:
    """Aggregate finished cells over seeds; ratios are dense / compressed (bigger is better)."""
    buckets: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r.get("status") != "done":
            continue
        res = r["result"]
        buckets[(res["group"], res["method"], str(res.get("level", "-")))].append(res)
    dense: dict[str, dict[str, float | None]] = {}
    for (group, method, _), rs in buckets.items():
        if method == "dense":
            dense[group] = {
                "acc": _mean([x["acc"] for x in rs]),
                "params": _mean([x["params"] for x in rs]),
                "macs": _mean([x["macs"] for x in rs]),
                "latency_ms": _mean([x.get("latency_ms") for x in rs]),
            }
    rows = []
    for (group, method, level), rs in sorted(buckets.items()):
        accs = [x["acc"] for x in rs]
        ref = dense.get(group, {})
        params, macs = _mean([x["params"] for x in rs]), _mean([x["macs"] for x in rs])
        lat = _mean([x.get("latency_ms") for x in rs])

        def ratio(a: float | None, b: float | None) -> float | None:
            return a / b if a and b else None

        extra_keys = {k for x in rs for k in x if k.startswith("x_")}
        rows.append(Row(
            group=group, method=method, level=level, n_seeds=len(rs),
            acc_mean=statistics.fmean(accs),
            acc_std=statistics.pstdev(accs) if len(accs) > 1 else 0.0,
            d_acc=statistics.fmean(accs) - ref["acc"] if ref.get("acc") is not None else None,
            params=params, macs=macs, latency_ms=lat,
            params_x=ratio(ref.get("params"), params), macs_x=ratio(ref.get("macs"), macs),
            latency_x=_latency_ratio(rs, ref.get("latency_ms"), lat),
            train_seconds=_mean([x.get("train_seconds") for x in rs]),
            extra={k: _mean([x.get(k) for x in rs]) for k in sorted(extra_keys)},
        ))
    return rows


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def to_markdown(rows: list[Row]) -> str:
    """One Markdown table: accuracy (mean ± std over seeds), Δ vs dense and the × ratios."""
    extra_cols = sorted({k for r in rows for k in r.extra})
    head = ["group", "method", "level", "seeds", "acc %", "Δ vs dense", "params", "params ×",
            "MACs ×", "latency ms (b=1)", "latency ×", "train s", *[c[2:] for c in extra_cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        acc = f"{r.acc_mean:.2f}" + (f" ± {r.acc_std:.2f}" if r.n_seeds > 1 else "")
        cells = [r.group, r.method, r.level, str(r.n_seeds), acc, _fmt(r.d_acc, "+.2f"),
                 f"{r.params / 1e6:.3f}M" if r.params else "–", _fmt(r.params_x, ".2f"),
                 _fmt(r.macs_x, ".2f"), _fmt(r.latency_ms, ".3f"), _fmt(r.latency_x, ".2f"),
                 _fmt(r.train_seconds, ".0f"), *[_fmt(r.extra.get(c), ".3g") for c in extra_cols]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def suite_header(name: str, results: list[dict[str, Any]]) -> str:
    """The table's header, stating the settings the cells really ran with (not the request)."""
    settings = [r.get("params", {}).get("settings") or {} for r in results]
    env = next((r["env"] for r in results if r.get("env")), {})

    def values(key: str) -> str:
        vals = sorted({json.dumps(s.get(key)) for s in settings if key in s})
        shown = [("all" if v == "null" else v.strip('"')) for v in vals]
        return "/".join(shown) if shown else "?"

    seeds = sorted({r.get("params", {}).get("seed") for r in results} - {None})
    auto = f"auto: {env['precision_auto']}" if env.get("precision_auto") else "auto"
    precisions = sorted({str((s.get("train_options") or {}).get("precision", "fp32"))
                         .replace("auto", auto) for s in settings}) or ["?"]
    return (f"Suite `{name}` ({values('dataset')}; {values('epochs')} epochs; training in "
            f"{'/'.join(precisions)}; train limit "
            f"{values('limit_train')}, test limit {values('limit_test')}; lr {values('lr')}, "
            f"{values('schedule')} schedule; seeds {seeds}; {len(results)} cells). Machine: "
            f"{env.get('machine')} ({env.get('cpu_count')} cores, {env.get('torch_threads')} "
            f"torch threads, device {env.get('device')}); torch {env.get('torch')}; rankwise "
            f"{env.get('rankwise')} @ {env.get('git_commit')}; {env.get('date')}."
            f"{_method_settings(results)}\n\n")


def _method_settings(results: list[dict[str, Any]]) -> str:
    """' Method settings: sfw: k 0.3, …, lr 0.3.' from the cells' method options and the
    training fields a method overrides ('' when none)."""
    per: dict[str, str] = {}
    for r in results:
        s = r.get("params", {}).get("settings") or {}
        opts = {**(s.get("method_options") or {}), **(s.get("method_train") or {})}
        if opts and r["params"].get("method") not in ("dense", "pretrain"):
            per[r["params"]["method"]] = ", ".join(f"{k} {v}" for k, v in opts.items())
    return (" Method settings: " + "; ".join(f"{m}: {t}" for m, t in sorted(per.items())) + "."
            if per else "")


def plot_pareto(rows: list[Row], path: Path) -> list[Path]:
    """Accuracy vs params and vs measured latency, one curve per method, one PNG per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    groups = sorted({r.group for r in rows})
    for group in groups:
        grs = [r for r in rows if r.group == group]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, attr, label in ((axes[0], "params", "params"),
                                (axes[1], "latency_ms", "latency ms (batch 1)")):
            for method in sorted({r.method for r in grs}):
                pts = sorted((getattr(r, attr), r.acc_mean, r.acc_std) for r in grs
                             if r.method == method and getattr(r, attr))
                if not pts:
                    continue
                xs, ys, es = zip(*pts, strict=True)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
            ax.set_xlabel(label)
            ax.set_ylabel("test accuracy %")
            ax.grid(alpha=0.3)
        axes[0].set_xscale("log")
        axes[0].legend(fontsize=8)
        fig.suptitle(group)
        fig.tight_layout()
        out = Path(path).parent / f"{Path(path).stem}-{group.replace('/', '-')}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)
    return written
