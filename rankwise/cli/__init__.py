"""`rankwise` command line: one module per sub-command, each exposing `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines `register(subparsers) -> None`, adding one sub-command whose parser sets
# `func=callable(args) -> int`.
COMMAND_MODULES = (
    "decompose",
    "profile",
    "train",
    "eval",
    "sweep",
    "analyze",
    "compress",
    "bench",
    "load",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rankwise", description="Low-rank training and compression of PyTorch models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"rankwise.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"rankwise.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from rankwise.errors import RankwiseError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RankwiseError as e:
        print(f"rankwise {args.command}: error: {e}", file=sys.stderr)
        return 2
