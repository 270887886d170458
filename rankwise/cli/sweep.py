"""`rankwise sweep RUN [RUN2 ...]`: accuracy of trained runs compressed at several ratios, no
retraining — SVD truncation of every conv (`--kind lowrank`) or L1 filter pruning
(`--kind filters`) — so dense, TRP and SFW runs compare side by side.

Each RUN is a `rankwise train --out` directory (or any `rankwise.save` directory), loaded like
`rankwise eval` does. The test data is the dataset the first run recorded unless `--dataset`
names another. Writes `sweep.json`, `sweep.md` and `sweep.png` into `--out` (default
`RUN/sweep-KIND` for one run, `./sweep-KIND` for several) and prints the comparison table. The
output folder is built beside itself and swapped in when complete; a non-empty folder that is not
an earlier sweep is refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from rankwise.errors import ConfigError


def _labels(paths: list[Path]) -> list[str]:
    """Run directory names, made unique with their parent's name (then an index) if needed."""
    labels = [p.resolve().name or str(p) for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{p.resolve().parent.name}/{p.resolve().name}" for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{i}:{lab}" for i, lab in enumerate(labels)]
    return labels


def dataset_spec_for(meta: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The dataset spec (`rankwise.cli.train.dataset_spec` form) to evaluate a run on."""
    spec = dict(meta.get("dataset") or {}) if isinstance(meta.get("dataset"), dict) else {}
    if args.dataset is not None and args.dataset != spec.get("name"):
        spec = {"name": args.dataset, "kwargs": {}}
    if not spec.get("name"):
        raise ConfigError("the run does not record its dataset; pass --dataset, e.g. cifar10")
    if spec["name"] == "synthetic" and not spec.get("kwargs"):
        shape = meta.get("input_shape") or [3, 32, 32]
        spec["kwargs"] = {"size": args.synthetic_size, "shape": list(shape), "num_classes": 10,
                          "seed": 0}
    return spec


def sweep_command(args: argparse.Namespace) -> int:
    from rankwise.cli import output_of
    from rankwise.cli.eval import load_run_model
    from rankwise.cli.train import load_split
    from rankwise.compress.sweep import filter_sweep, lowrank_sweep, parse_ratios
    from rankwise.compress.sweep_report import write_sweep
    from rankwise.io.atomic import atomic_dir, check_replaceable, json_text

    ratios = parse_ratios(args.ratios)
    paths = [Path(p) for p in args.runs]
    out = Path(args.out) if args.out is not None else (
        paths[0] / f"sweep-{args.kind}" if len(paths) == 1 else Path(f"sweep-{args.kind}"))
    replace_if = output_of("sweep", "sweep.json")
    check_replaceable(out, replace_if)  # refuse before the slow part
    results: dict[str, list[dict[str, Any]]] = {}
    meta_out: dict[str, Any] = {"kind": args.kind, "ratios": list(ratios), "runs": {}}
    data_cache: dict[str, Any] = {}
    first_spec: dict[str, Any] | None = None
    for path, label in zip(paths, _labels(paths), strict=True):
        model, meta = load_run_model(path, args.device)
        if first_spec is None:  # one test set for all runs: a fair comparison
            first_spec = dataset_spec_for(meta, args)
        spec = first_spec
        key = json.dumps(spec, sort_keys=True)
        if key not in data_cache:
            data_cache[key] = load_split(spec, False, args.data_dir, args.download,
                                         args.limit_test)
        data = data_cache[key]
        shape = tuple(meta.get("input_shape") or data.shape)
        common = dict(input_shape=shape, batch_size=args.batch_size, device=args.device)
        if args.kind == "lowrank":
            rows = lowrank_sweep(model, data, ratios, scheme=args.scheme,
                                 include_linear=args.include_linear, **common)
        else:
            rows = filter_sweep(model, data, ratios, **common)
        results[label] = rows
        meta_out["runs"][label] = {"path": str(path), "dataset": spec["name"],
                                   "method": meta.get("method"), "samples": len(data)}
    with atomic_dir(out, replace_if=replace_if) as tmp:
        files = {k: out / p.name for k, p in write_sweep(tmp, results, args.kind,
                                                         meta=meta_out).items()}
    if args.json:
        print(json_text({"out": str(out), "files": {k: str(v) for k, v in files.items()},
                          "runs": {k: [{c: r[c] for c in ("ratio", "acc", "stability",
                                                            "compression", "speedup")}
                                       for r in v] for k, v in results.items()}}))
        return 0
    _print_table(results, args.kind, out)
    return 0


def _print_table(results: dict[str, list[dict[str, Any]]], kind: str, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"rankwise sweep ({kind}, no retraining): test accuracy %")
    table.add_column("ratio", justify="right")
    for label in results:
        table.add_column(label, justify="right")
    ratios = sorted({r["ratio"] for rows in results.values() for r in rows})
    for s in ratios:
        cells = []
        for rows in results.values():
            row = next((r for r in rows if r["ratio"] == s), None)
            cells.append("–" if row is None else f"{100 * row['acc']:.2f}")
        table.add_row(f"{s:g}", *cells)
    console = Console()
    console.print(table)
    console.print(f"wrote {out / 'sweep.json'}, sweep.md, sweep.png")


def register(subparsers: Any) -> None:
    from rankwise.cli.train import add_data_arguments

    p = subparsers.add_parser(
        "sweep", help="accuracy vs compression ratio without retraining (runs side by side)",
        description="SVD-truncate every conv to max(1, int((1-s)·rank)) (--kind lowrank) or "
                    "L1-prune the fraction s of every conv's filters (--kind filters) for each "
                    "ratio s, evaluate without retraining, compare runs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run / saved-model directories")
    p.add_argument("--kind", choices=("lowrank", "filters"), default="lowrank")
    p.add_argument("--ratios", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
                   help="comma-separated fractions of rank/filters removed per layer")
    p.add_argument("--scheme", choices=("channel", "spatial"), default="channel",
                   help="conv matricization of --kind lowrank")
    p.add_argument("--include-linear", action="store_true",
                   help="--kind lowrank: truncate nn.Linear weights too")
    p.add_argument("--dataset", default=None, help="default: the dataset the first run used")
    add_data_arguments(p)
    p.add_argument("--limit-test", type=int, default=None, help="use the first N test samples")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default RUN/sweep-KIND, or ./sweep-KIND for several)")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of a table")
    p.set_defaults(func=sweep_command)
