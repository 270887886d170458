"""`rankwise` command line: one module per sub-command, each exposing `register(subparsers)`.

`main(argv)` is the only entry point. Its contract for every sub-command:
- bad input (a flag value, a file, a device, a disk that is full or read-only) prints ONE line
  `rankwise CMD: error: <cause>; <fix>` on stderr and returns 2; `--debug` (anywhere on the
  command line) also prints the traceback;
- float flags accept finite numbers only (`--warmup inf` is refused while parsing), list flags
  (`--seeds 0,1`, `--milestones 82,122`) are checked while parsing;
- `--device`/`--map-location` must name a device this machine has; `--out` must not name a file;
- Ctrl-C returns 130 after one short line (what was written atomically stays intact).
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEBUG_FLAG = "--debug"
INT_LIST_FLAGS = ("--seeds", "--milestones")  # comma-separated ints, checked while parsing
DEVICE_FLAGS = (("device", "--device"), ("map_location", "--map-location"))
MAX_LINE = 600  # characters of an error line


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line: `PROG: error: MESSAGE; see PROG --help`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {_one_line(message)}; see `{self.prog} --help`\n")


def finite_float(text: str) -> float:
    """argparse type: a finite float (NaN and ±Inf are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_list(text: str) -> str:
    """argparse type: comma-separated ints (empty parts allowed); returns `text` unchanged so
    the command parses it as before."""
    for part in str(text).split(","):
        try:
            if part.strip():
                int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers like 0,1,2, got {text!r}") from None
    return text


def _harden(parser: argparse.ArgumentParser) -> None:
    """Give every float flag of `parser` and its sub-parsers the `finite_float` type and every
    `INT_LIST_FLAGS` flag the `int_list` check."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _harden(sub)
        elif action.type is float:
            action.type = finite_float
        elif action.type is None and set(action.option_strings) & set(INT_LIST_FLAGS):
            action.type = int_list


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rankwise",
                    description="Low-rank training and compression of PyTorch models.")
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help="show the full traceback of an error (accepted anywhere)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    # One module per sub-command, each with `register(subparsers)` adding its parser (which sets
    # `func=callable(args) -> int`); imported here because they import this module's helpers.
    from rankwise.cli import (
        analyze,
        bench,
        compress,
        decompose,
        eval,
        export,
        load,
        profile,
        sweep,
        train,
    )

    for module in (decompose, profile, train, eval, sweep, analyze, compress, bench, load, export):
        module.register(sub)
    _harden(parser)
    return parser


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_LINE else text[:MAX_LINE - 1] + "…"


def check_device(text: str, flag: str = "--device") -> None:
    """`ConfigError` unless `text` names a device torch can use on this machine."""
    import torch

    from rankwise.errors import ConfigError

    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{flag} {text!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no GPU visible"
            raise ConfigError(f"{flag} {text}: CUDA is not available on this machine ({why}); "
                              f"pass {flag} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{flag} {text}: this machine has {torch.cuda.device_count()} "
                              "GPU(s); pass cuda:0 .. cuda:N-1 or cpu")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps")
                                    and torch.backends.mps.is_available()):
        raise ConfigError(f"{flag} {text}: MPS is not available on this machine; pass {flag} cpu")
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise ConfigError(f"{flag} {text}: unsupported device type; use cpu or cuda")


def check_args(args: argparse.Namespace) -> None:
    """The checks every sub-command shares: devices exist, `--out` is not a file."""
    from rankwise.io.atomic import check_out_dir

    for attr, flag in DEVICE_FLAGS:
        value = getattr(args, attr, None)
        if isinstance(value, str):
            check_device(value, flag)
    if getattr(args, "out", None) is not None:
        check_out_dir(args.out)


def output_of(command: str, *files: str) -> Callable[[Path], bool]:
    """`atomic_dir` `replace_if` predicate: True if a folder holds an earlier output of
    `rankwise COMMAND`: every name in `files` exists, or its `model.json` records
    `meta.command == COMMAND` (or holds nothing but the names in `files`)."""
    def check(out: Path) -> bool:
        if files and all((out / f).exists() for f in files):
            return True
        try:
            config = json.loads((out / "model.json").read_text())
            return (config.get("meta") or {}).get("command") == command
        except (OSError, ValueError, AttributeError):
            return False

    return check


_OS_FIXES = {
    errno.ENOSPC: "free disk space or write to another disk",
    errno.EDQUOT: "free space in your quota or write to another disk",
    errno.EROFS: "the filesystem is read-only; write somewhere else",
    errno.EACCES: "check the permissions or write somewhere else",
    errno.EPERM: "check the permissions or write somewhere else",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a parent of the path is a file; pass another path",
    errno.EISDIR: "the path is a directory; pass a file",
    errno.EEXIST: "remove it or pass another path",
    errno.ENOTEMPTY: "remove it or pass another path",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EMFILE: "raise the open-file limit (ulimit -n)",
}


def describe_error(e: BaseException) -> str:
    """One line `<cause>; <fix>` for an exception raised by a sub-command."""
    from rankwise.errors import RankwiseError

    if isinstance(e, RankwiseError):
        return _one_line(str(e))
    if isinstance(e, OSError) and e.errno is not None:
        where = f" {e.filename}" if e.filename else ""
        fix = _OS_FIXES.get(e.errno, "check the path and the disk")
        return _one_line(f"cannot access{where}: {e.strerror or e}; {fix}")
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return _one_line(f"out of memory ({e}); use a smaller --batch-size, model or input")
    if isinstance(e, (ValueError, TypeError, KeyError, FileNotFoundError)):
        return _one_line(f"{e}; check the flag values and files you passed (--debug shows "
                         "where this came from)")
    return _one_line(f"{type(e).__name__}: {e}; unexpected error, rerun with --debug for the "
                     "traceback and report it")


def _one_line_warnings(prog: str, show: Any) -> Any:
    """`warnings.showwarning` printing rankwise's own warnings (`rankwise.errors`) as one line
    `PROG: warning: MESSAGE`; any other warning goes to `show` as before."""
    def one_line(message: Any, category: type[Warning], *rest: Any, **kw: Any) -> None:
        if category.__module__ == "rankwise.errors":
            print(f"{prog}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, *rest, **kw)
    return one_line


def main(argv: list[str] | None = None) -> int:
    """Run `rankwise ARGV`; returns the exit code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = DEBUG_FLAG in argv[:end]
    argv = [a for i, a in enumerate(argv) if i >= end or a != DEBUG_FLAG]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a one-line usage error (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    prog = f"rankwise {args.command}"
    try:
        check_args(args)
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(prog, warnings.showwarning)
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - the CLI's contract: one line, no traceback
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {describe_error(e)}", file=sys.stderr)
        return 2


__all__ = ["Parser", "build_parser", "check_device", "describe_error", "finite_float",
           "int_list", "main", "output_of"]
