"""`rankwise analyze RUN_OR_MODEL`: per-layer singular spectra and rank measures of a model.

RUN_OR_MODEL is a run directory (trainer output: `config.json` + `model.json` +
`model.safetensors`), a directory saved by `rankwise.save` or `rankwise compress` (or a folder
holding one one level down), or a zoo model name (random init, `--seed`). Writes into `--out`
(default: `RUN/analysis` for a directory, nothing for a model name): `report.md`, `report.json`,
`spectra.png` (σ/σ_max of every layer on one log-scale plot) and `erank.png` (effective rank
next to max rank per layer); prints a rich table. The output folder is built beside itself and
swapped in when complete; a non-empty folder that is not an earlier analysis is refused.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankwise.analysis.layer_ranks import LayerRankStats
from rankwise.cli.profile import default_shape, model_kwargs
from rankwise.errors import CheckpointError


@dataclass
class LoadedModel:
    """A model to analyze/compress and what is needed to save it again."""

    model: nn.Module
    arch: str | None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    path: Path | None = None
    run_config: dict[str, Any] = field(default_factory=dict)


def load_target(target: str, args: argparse.Namespace | None = None) -> LoadedModel:
    """Load RUN_OR_MODEL (see the module docstring); never unpickles.

    A trainer run's `config.json` (if present next to or above `model.json`) is returned as
    `run_config` (e.g. its `dataset` entry); without one, the `meta` that `rankwise decompose`
    stores in `model.json` (which names the dataset too).
    """
    from rankwise import io
    from rankwise.cli.decompose import find_saved_dir
    from rankwise.compress.artifact import load_compressed

    path = Path(target)
    if path.exists():
        saved = find_saved_dir(path) if path.is_dir() else None
        if saved is None:
            raise CheckpointError(f"{path} holds no model.json (in it or one folder below); pass "
                                  "a run directory, a rankwise.save directory or a model name")
        config = io.read_config(saved)
        model = load_compressed(saved)
        run_config: dict[str, Any] = {}
        for d in (saved, saved.parent, path):
            if (d / "config.json").is_file():
                try:
                    run_config = json.loads((d / "config.json").read_text())
                except json.JSONDecodeError as e:
                    raise CheckpointError(f"{d / 'config.json'} is not valid JSON ({e})") from e
                break
        else:
            run_config = dict(config.get("meta") or {})
        return LoadedModel(model, config.get("arch"), dict(config.get("arch_kwargs") or {}),
                           io.saved_input_shape(saved), saved, run_config)
    from rankwise.models import create_model

    kw = model_kwargs(args) if args is not None else {}
    torch.manual_seed(int(getattr(args, "seed", 0) or 0))
    model = create_model(target, **kw).eval()
    return LoadedModel(model, target, kw, default_shape(target, kw), None, {})


# ------------------------------------------------------------------------------------ plots


def plot_spectra(stats: list[LayerRankStats], file: Path, title: str = "") -> Path:
    """One log-scale plot of σ_i/σ_max against i/max_rank for every layer; returns `file`."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cmap = colormaps["viridis"]
    for i, s in enumerate(stats):
        y = s.normalized_spectrum().numpy()
        y = y.clip(min=1e-12)
        x = (torch.arange(1, len(y) + 1, dtype=torch.float64) / s.max_rank).numpy()
        ax.plot(x, y, color=cmap(i / max(1, len(stats) - 1)), lw=1,
                label=s.name if len(stats) <= 12 else None)
    ax.set_yscale("log")
    ax.set_xlabel("i / max rank")
    ax.set_ylabel("σ_i / σ_max")
    ax.set_title(title or "normalized singular spectra per layer")
    if len(stats) <= 12:
        ax.legend(fontsize=7)
    else:  # too many layers for a legend: a colorbar of layer position instead
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        bar = fig.colorbar(ScalarMappable(Normalize(0, len(stats) - 1), cmap), ax=ax)
        bar.set_label(f"layer index (0 = {stats[0].name}, {len(stats) - 1} = {stats[-1].name})")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(file, dpi=100)
    return file


def plot_eranks(stats: list[LayerRankStats], file: Path, title: str = "") -> Path:
    """Bar chart per layer: max rank, 0.9-energy rank and effective rank; returns `file`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(stats)
    fig = Figure(figsize=(max(6.0, 0.35 * n + 2), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = list(range(n))
    ax.bar(x, [s.max_rank for s in stats], color="#cccccc", label="max rank")
    ax.bar(x, [s.energy_ranks.get(0.9, 0) for s in stats], width=0.6, color="#7fa7d9",
           label="rank @ 0.9 energy")
    ax.bar(x, [s.erank for s in stats], width=0.3, color="#d9534f", label="effective rank")
    ax.set_xticks(x)
    ax.set_xticklabels([s.name for s in stats], rotation=90, fontsize=7)
    ax.set_ylabel("rank")
    ax.set_title(title or "effective rank vs max rank per layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(file, dpi=100)
    return file


def stats_table(stats: list[LayerRankStats], title: str) -> Any:
    """A rich Table of the per-layer measures."""
    from rich.table import Table

    table = Table(title=title)
    energies = list(stats[0].energy_ranks) if stats else []
    for h in ("layer", "kind", "matrix", "max", *[f"r@{e:g}" for e in energies], "erank",
              "stable", "erank/max", "tail"):
        table.add_column(h, justify="left" if h in ("layer", "kind", "matrix") else "right")
    for s in stats:
        table.add_row(s.name, s.kind, f"{s.matrix_shape[0]}×{s.matrix_shape[1]}",
                      str(s.max_rank), *[str(s.energy_ranks[e]) for e in energies],
                      f"{s.erank:.2f}", f"{s.stable_rank:.2f}", f"{s.erank_ratio:.3f}",
                      f"{s.tail_energy:.4f}")
    return table


def analyze_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from rankwise.analysis.layer_ranks import analyze_model, summarize, to_markdown
    from rankwise.cli import output_of
    from rankwise.io.atomic import (
        atomic_dir,
        atomic_write_json,
        atomic_write_text,
        check_replaceable,
        json_text,
    )

    replace_if = output_of("analyze", "report.json", "report.md")
    if args.out:
        check_replaceable(args.out, replace_if)  # refuse before the slow part
    loaded = load_target(args.target, args)
    stats = analyze_model(loaded.model, args.scheme)
    title = f"rank analysis of {args.target} ({args.scheme})"
    summary = summarize(stats)
    out = Path(args.out) if args.out else (loaded.path / "analysis" if loaded.path else None)
    if out is not None:
        report = {"command": "analyze", "target": str(args.target), "arch": loaded.arch,
                  "scheme": args.scheme, "summary": summary,
                  "layers": [s.to_dict() for s in stats]}
        with atomic_dir(out, replace_if=replace_if) as tmp:
            atomic_write_json(tmp / "report.json", report)  # NaN/Inf → null
            md = to_markdown(stats, title, args.scheme)
            if not args.no_plots:
                plot_spectra(stats, tmp / "spectra.png")
                plot_eranks(stats, tmp / "erank.png")
                md += "\n![spectra](spectra.png)\n\n![effective rank](erank.png)\n"
            atomic_write_text(tmp / "report.md", md)
    if args.json:
        print(json_text({"summary": summary, "layers": [s.to_dict(False) for s in stats]}))
    else:
        console = Console(width=max(140, Console().width))
        console.print(stats_table(stats, title))
        console.print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in summary.items()))
        if out is not None:
            console.print(f"wrote {out}/report.md, report.json"
                          + ("" if args.no_plots else ", spectra.png, erank.png"))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "analyze", help="per-layer singular spectra, energy/effective/stable ranks",
        description="Measure how far each conv/linear layer of a model is from low rank: "
                    "singular spectra, energy ranks at 0.8/0.9/0.95/0.99, effective rank, stable "
                    "rank; writes report.md/report.json and PNG plots.")
    p.add_argument("target", help="run directory, saved model directory, or zoo model name")
    p.add_argument("--out", default=None,
                   help="output directory (default RUN/analysis; none for a model name)")
    p.add_argument("--scheme", default="channel", choices=("channel", "spatial"),
                   help="conv matricization: channel (n, c·kh·kw) or spatial (n·kw, c·kh)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--in-channels", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="init seed for a model name (0)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=analyze_command)
