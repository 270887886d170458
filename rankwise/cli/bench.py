"""`rankwise bench SUITE`: run a benchmark suite (resumable) and write its tables and plots."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any


def _method_suite(args: argparse.Namespace) -> Path:
    from rankwise.bench.harness import run_cells
    from rankwise.bench.quick import SUITES, run_suite_cell, suite_cells
    from rankwise.bench.report import plot_pareto, summarize, to_markdown

    cfg = SUITES[args.suite]
    overrides: dict[str, Any] = {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.seeds:
        overrides["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    if args.limit_train is not None:
        overrides["limit_train"] = args.limit_train
    if args.limit_test is not None:
        overrides["limit_test"] = args.limit_test
    if args.methods:
        overrides["methods"] = tuple(args.methods.split(","))
    if args.threads:
        overrides["threads"] = args.threads
    cfg = dataclasses.replace(cfg, **overrides)
    out = Path(args.out or f"runs/bench-{cfg.name}")
    command = "rankwise " + " ".join(sys.argv[1:])  # `rankwise ...` and `python -m rankwise ...`
    results = run_cells(suite_cells(cfg), lambda c: run_suite_cell(cfg, out, c), out,
                        resume=not args.no_resume, command=command, progress=not args.quiet)
    rows = summarize(results)
    table = to_markdown(rows)
    failed = [r for r in results if r["status"] != "done"]
    env = results[0]["env"] if results else {}
    header = (f"Suite `{cfg.name}` ({cfg.dataset}; {cfg.epochs} epochs; train limit "
              f"{cfg.limit_train or 'all'}, test limit {cfg.limit_test or 'all'}; seeds "
              f"{list(cfg.seeds)}). Machine: {env.get('machine')} ({env.get('cpu_count')} cores, "
              f"{env.get('torch_threads')} torch threads, device {env.get('device')}); torch "
              f"{env.get('torch')}; rankwise {env.get('rankwise')} @ {env.get('git_commit')}; "
              f"{env.get('date')}.\n\n")
    (out / "table.md").write_text(header + table)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    pngs = plot_pareto(rows, out / "pareto.png")
    print(header + table)
    for f in failed:
        print(f"FAILED {f['key']}: {f['error']}", file=sys.stderr)
    print(f"wrote {out / 'table.md'}, {out / 'results.json'}, " + ", ".join(map(str, pngs)))
    return out


def bench_command(args: argparse.Namespace) -> int:
    if args.compare:
        from rankwise.bench.papers import compare_markdown

        ours = None
        if args.out and (Path(args.out) / "results.json").exists():
            from rankwise.bench.report import summarize

            rows = summarize(json.loads((Path(args.out) / "results.json").read_text()))
            ours = [{"group": r.group, "method": r.method, "level": r.level, "acc": r.acc_mean,
                     "d_acc": None if r.d_acc is None else f"{r.d_acc:+.2f}",
                     "params_x": None if r.params_x is None else f"{r.params_x:.2f}",
                     "macs_x": None if r.macs_x is None else f"{r.macs_x:.2f}"} for r in rows]
        print(compare_markdown(args.compare, ours))
        return 0
    if args.suite is None:
        raise SystemExit("rankwise bench: give a SUITE (quick, cifar10, speed, elrt-formats, "
                         "regularizers) or --compare")
    if args.suite == "speed":
        from rankwise.bench.speed import run_speed_suite

        path = run_speed_suite(args.out or "runs/bench-speed", quick=args.reduced,
                               threads=args.threads, resume=not args.no_resume)
        print(Path(path).read_text() if Path(path).is_file() else path)
        return 0
    out = _method_suite(args)
    results = json.loads((out / "results.json").read_text())
    return 1 if any(r["status"] != "done" for r in results) else 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench", help="run a benchmark suite: quick (CPU, Fashion-MNIST), cifar10, speed, "
                      "elrt-formats, regularizers",
        description="Resumable benchmark suites. Finished cells are reused; a killed run "
                    "resumes at the next unfinished cell.")
    p.add_argument("suite", nargs="?",
                   choices=("quick", "cifar10", "speed", "elrt-formats", "regularizers"))
    p.add_argument("--out", default=None, help="run directory (default runs/bench-SUITE)")
    p.add_argument("--compare", default=None, metavar="PAPER",
                   help="print a paper's published numbers (trp, sfw, elrt, survey) next to "
                        "ours from --out")
    p.add_argument("--no-resume", action="store_true", help="rerun finished cells")
    p.add_argument("--epochs", type=int, default=None, help="override the suite's epochs")
    p.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--methods", default=None, help="subset, e.g. dense,trp")
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per run")
    p.add_argument("--reduced", action="store_true",
                   help="speed: ImageNet models at 112x112, shorter timing, CP timed on layer1")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=bench_command)
