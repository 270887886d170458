"""Tables, plots and files of a no-retraining sweep (`rankwise.compress.sweep`): accuracy and
stability against the fraction removed, per run."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rankwise.compress.sweep import KINDS, Row
from rankwise.errors import ConfigError


def plot_sweep(results_by_run: Mapping[str, Sequence[Row]], path: str | os.PathLike[str],
               title: str | None = None, metric: str = "acc") -> Path:
    """Accuracy (%, or another row key) vs ratio, one curve per run, written as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    scale = 100.0 if metric == "acc" else 1.0
    for label, rows in results_by_run.items():
        pts = sorted((r["ratio"], r[metric]) for r in rows if r.get(metric) is not None)
        if pts:
            ax.plot([p[0] for p in pts], [scale * p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel("compression ratio s (fraction of rank / filters removed per layer)")
    ax.set_ylabel("test accuracy (%)" if metric == "acc" else metric)
    ax.set_title(title or "accuracy without retraining")
    ax.grid(True, alpha=0.3)
    if results_by_run:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _num(v: float | int | None, fmt: str = ",") -> str:
    return "–" if v is None else format(v, fmt)


def sweep_markdown(results_by_run: Mapping[str, Sequence[Row]], kind: str = "lowrank",
                   title: str | None = None) -> str:
    """Markdown: accuracy per ratio side by side for all runs, then one detail table per run."""
    what = "SVD truncation (rank)" if kind == "lowrank" else "L1 filter pruning (filters)"
    lines = [f"# {title or 'Compression sweep'}: {what}, no retraining", ""]
    labels = list(results_by_run)
    ratios = sorted({r["ratio"] for rows in results_by_run.values() for r in rows})
    lines += ["| ratio | " + " | ".join(f"{lab} acc %" for lab in labels) + " |",
              "|---|" + "---|" * len(labels)]
    for s in ratios:
        cells = []
        for lab in labels:
            match = [r for r in results_by_run[lab] if r["ratio"] == s]
            cells.append(_pct(match[0]["acc"]) if match else "–")
        lines.append(f"| {s:g} | " + " | ".join(cells) + " |")
    for lab, rows in results_by_run.items():
        lines += ["", f"## {lab}", "",
                  "| ratio | acc % | stability | params | compression | MACs | speedup | "
                  "rel. norm drop | weight error |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            comp = "–" if r["compression"] is None else f"{r['compression']:.2f}×"
            speed = "–" if r["speedup"] is None else f"{r['speedup']:.2f}×"
            lines.append(
                f"| {r['ratio']:g} | {_pct(r['acc'])} | {_num(r['stability'], '.4f')} | "
                f"{_num(r['params'])} | {comp} | {_num(r['macs'])} | {speed} | "
                f"{_num(r['relative_norm_drop'], '.4f')} | {_num(r['weight_error'], '.4f')} |")
    lines.append("")
    return "\n".join(lines)


def write_sweep(out_dir: str | os.PathLike[str], results_by_run: Mapping[str, Sequence[Row]],
                kind: str = "lowrank", meta: Mapping[str, Any] | None = None,
                title: str | None = None) -> dict[str, Path]:
    """Write `sweep.json` (`{"kind", "meta", "runs": {label: rows}}`, strict JSON), `sweep.md`,
    `sweep.png`; the first two atomically."""
    from rankwise.io.atomic import atomic_write_json, atomic_write_text

    if kind not in KINDS:
        raise ConfigError(f"sweep kind {kind!r} unknown; use one of {KINDS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "sweep.json", "md": out / "sweep.md", "png": out / "sweep.png"}
    doc = {"kind": kind, "meta": dict(meta or {}), "runs": {k: list(v) for k, v in
                                                            results_by_run.items()}}
    atomic_write_json(paths["json"], doc)  # NaN accuracies are written as null
    atomic_write_text(paths["md"], sweep_markdown(results_by_run, kind, title))
    plot_sweep(results_by_run, paths["png"], title=title or f"{kind} sweep, no retraining")
    return paths


__all__ = ["plot_sweep", "sweep_markdown", "write_sweep"]
