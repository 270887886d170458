"""`rankwise bench SUITE`: run a benchmark suite (resumable) and write its tables and plots;
`rankwise bench report`: assemble BENCHMARKS.md from the committed results (`results/`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from rankwise.errors import ConfigError
from rankwise.io.atomic import atomic_write
from rankwise.train.logger import dumps


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError as e:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers like 0,1,2") \
            from e
    if not seeds:
        raise ConfigError(f"--seeds {text!r}: name at least one seed, e.g. 0,1,2")
    return seeds


def suite_from_args(args: argparse.Namespace):
    """The suite's `SuiteConfig` with the command-line overrides (validated)."""
    from rankwise.bench.quick import SUITES

    cfg = SUITES[args.suite]
    overrides: dict[str, Any] = {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.seeds is not None:
        overrides["seeds"] = _seeds(args.seeds)
    if args.limit_train is not None:
        overrides["limit_train"] = args.limit_train
    if args.limit_test is not None:
        overrides["limit_test"] = args.limit_test
    if args.methods is not None:
        overrides["methods"] = tuple(m for m in args.methods.split(",") if m.strip())
    if args.threads is not None:
        overrides["threads"] = args.threads
    cfg = dataclasses.replace(cfg, **overrides)  # __post_init__ validates the numbers
    from rankwise.errors import ConfigError
    from rankwise.train.recipes import RECIPES

    unknown = [m for m in cfg.methods if m != "pretrain" and m.split(":")[0] not in RECIPES]
    if unknown:
        raise ConfigError(f"--methods: unknown {unknown}; known: pretrain, {sorted(RECIPES)}")
    return cfg


def _method_suite(args: argparse.Namespace) -> tuple[Path, list[dict[str, Any]]]:
    from rankwise.bench.harness import failure_line, run_cells
    from rankwise.bench.quick import run_suite_cell, save_results, suite_cells
    from rankwise.bench.report import plot_pareto, suite_header, summarize, to_markdown
    from rankwise.data import require_dataset

    cfg = suite_from_args(args)
    # Missing data stops the suite here, with the data layer's one message, before any cell.
    require_dataset(cfg.dataset, args.data_dir, False if args.offline else None)
    out = Path(args.out or f"runs/bench-{cfg.name}")
    command = "rankwise " + " ".join(sys.argv[1:])  # `rankwise ...` and `python -m rankwise ...`
    results = run_cells(suite_cells(cfg), lambda c: run_suite_cell(cfg, out, c), out,
                        resume=not args.no_resume, command=command, progress=not args.quiet)
    rows = summarize(results)
    failed = [r for r in results if r["status"] != "done"]
    header = suite_header(cfg.name, results)
    if failed:
        header += (f"**Incomplete: {len(failed)} of {len(results)} cells failed** (see "
                   f"`{out / 'cells'}`).\n\n")
    table = to_markdown(rows)
    atomic_write(out / "table.md", (header + table).encode())
    atomic_write(out / "results.json", dumps(results, indent=2).encode())
    pngs = plot_pareto(rows, out / "pareto.png")
    print(header + table)
    for f in failed:
        print(failure_line(f), file=sys.stderr)
    if args.save_results is not None and not failed:
        dest = save_results(results, Path(args.save_results or f"results/{cfg.name}"), cfg.name)
        print(f"saved {len(results)} cell results into {dest}")
    elif args.save_results is not None:
        print("not saving results: the suite has failed cells", file=sys.stderr)
    print(f"wrote {out / 'table.md'}, {out / 'results.json'}, " + ", ".join(map(str, pngs)))
    return out, results


def _report(args: argparse.Namespace) -> int:
    from rankwise.bench.benchmarks_md import write_report

    path = write_report(Path(args.out or "BENCHMARKS.md"), Path(args.results))
    print(f"wrote {path}")
    return 0


def _cifar10(args: argparse.Namespace) -> int:
    """`rankwise bench cifar10 --action pending|commands|run|collect|section`: the suite's run
    commands (all, or those not finished under `--out`, default runs/cifar10, of the rows
    without a result file and the runs those read, `open_rows`), a queue running the
    unfinished ones (`bench.cifar10_queue`), result files from the finished runs
    (`RESULTS/cifar10/`), or the BENCHMARKS.md section."""
    from rankwise.bench.cifar10 import (
        DEFAULT_SCHEDULE,
        RUNS_DIR,
        SCHEDULES,
        SUITE,
        commands,
        open_rows,
        pending_commands,
        suite_rows,
    )

    if args.schedule is not None and args.schedule not in SCHEDULES:
        raise ConfigError(f"--schedule {args.schedule!r}: expected one of {sorted(SCHEDULES)}")
    runs, results = Path(args.out or RUNS_DIR), Path(args.results)
    default = args.models is None and args.schedule is None and args.seeds is None
    rows = suite_rows(tuple((args.models or "r20,r56").split(",")),
                      args.schedule or DEFAULT_SCHEDULE, _seeds(args.seeds or "0"))
    todo = rows if args.no_resume else open_rows(rows, results / SUITE)
    if args.action == "run":
        from rankwise.bench.cifar10_queue import run_queue

        failed = {n: rc for n, rc in run_queue(todo, runs).items() if rc != 0}
        for name, rc in failed.items():
            print(f"{name}: failed (exit {rc})", file=sys.stderr)
        return 1 if failed else 0
    if args.action in ("commands", "pending"):
        listed = commands(rows, runs) if args.action == "commands" else \
            pending_commands(runs, todo)
        print("\n".join(cmd for _, cmd in listed))
    elif args.action == "collect":
        from rankwise.bench.cifar10_collect import collect

        for path in collect(runs, results / SUITE, rows=rows, latency=not args.no_latency):
            print(path)
    else:
        from rankwise.bench.cifar10_report import section

        print(section(results, rows=None if default else rows))
    return 0


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
        raise ConfigError("give a SUITE (quick, cifar10, speed, elrt-formats, regularizers, "
                          "report) or --compare PAPER")
    if args.suite == "cifar10":
        return _cifar10(args)
    if args.suite == "report":
        return _report(args)
    if args.suite == "speed":
        from rankwise.bench.speed import run_speed_suite

        kinds = tuple(args.kinds.split(",")) if args.kinds else None
        path = run_speed_suite(args.out or "runs/bench-speed", quick=args.reduced,
                               threads=args.threads, resume=not args.no_resume, kinds=kinds,
                               match=args.match)
        print(Path(path).read_text() if Path(path).is_file() else path)
        return 0
    _, results = _method_suite(args)
    return 1 if any(r["status"] != "done" for r in results) else 0


def register(subparsers: Any) -> None:
    from rankwise.bench.papers import PAPERS  # the published numbers only (no torch)

    p = subparsers.add_parser(
        "bench", help="run a benchmark suite: quick (CPU, Fashion-MNIST), cifar10, speed, "
                      "elrt-formats, regularizers",
        description="Resumable benchmark suites. Finished cells are reused; a killed run "
                    "resumes at the next unfinished cell.")
    p.add_argument("suite", nargs="?",
                   choices=("quick", "cifar10", "speed", "elrt-formats", "regularizers",
                            "report"))
    p.add_argument("--out", default=None, help="run directory (default runs/bench-SUITE, "
                   "cifar10: runs/cifar10); for `report`: the file (default BENCHMARKS.md)")
    p.add_argument("--results", default="results",
                   help="report: folder of committed result JSONs (results/<suite>/)")
    p.add_argument("--save-results", nargs="?", const="", default=None, metavar="DIR",
                   help="copy the finished cells' JSONs into DIR (default results/SUITE) for "
                        "`rankwise bench report`; off by default so runs leave the repo clean")
    p.add_argument("--data-dir", default=None, help="where the suite's dataset is")
    p.add_argument("--offline", action="store_true", help="never download the dataset")
    p.add_argument("--compare", default=None, metavar="PAPER", choices=sorted(PAPERS),
                   help=f"print a paper's published numbers ({', '.join(sorted(PAPERS))}) next "
                        "to ours from --out")
    p.add_argument("--no-resume", action="store_true",
                   help="rerun finished cells (cifar10: also the rows whose result file exists)")
    p.add_argument("--epochs", type=int, default=None, help="override the suite's epochs")
    p.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--methods", default=None, help="subset, e.g. dense,trp")
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per run")
    p.add_argument("--reduced", action="store_true",
                   help="speed: ImageNet models at 112x112, shorter timing, CP timed on layer1")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--action", choices=("pending", "commands", "run", "collect", "section"),
                   default="section", help="cifar10: list the pending or all run commands, run "
                   "the pending ones one after another (one queue per core: `taskset -c N`), "
                   "collect finished runs into RESULTS/cifar10, or print the table (default)")
    p.add_argument("--models", default=None,
                   help="cifar10: model prefixes, comma-separated (default r20,r56)")
    p.add_argument("--schedule", default=None,
                   help="cifar10: cpu60 (default), cpu40 or paper")
    p.add_argument("--no-latency", action="store_true", help="cifar10 collect: no timing")
    p.add_argument("--kinds", default=None,
                   help="speed: comma-separated parts (layer, model, decomp, alloc)")
    p.add_argument("--match", default=None, metavar="GLOB", help="speed: only cells matching")
    p.set_defaults(func=bench_command)
