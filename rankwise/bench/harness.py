"""Benchmark harness: named cells, resumable runs, results as JSON.

A suite is a list of `Cell`s. Each cell is run once by a runner function and its result is written
atomically to `out_dir/cells/<key>.json` with the cell's `identity` (a hash of its params and the
rankwise version); a killed benchmark resumes at the first unfinished cell and reuses finished
ones whose identity matches — a cell whose settings changed is rerun. Nothing here knows about
methods: suites supply the runner (and put every result-changing setting into `params`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rankwise.io.atomic import atomic_write

Runner = Callable[["Cell"], dict[str, Any]]


@dataclass(frozen=True)
class Cell:
    """One measurement: `key` is unique in the suite; `params` are JSON-serialisable arguments."""

    key: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.key) + ".json"

    @property
    def identity(self) -> str:
        """SHA-256 of the key, the params (canonical JSON) and the rankwise version."""
        import rankwise

        text = json.dumps({"key": self.key, "params": self.params,
                           "rankwise": rankwise.__version__}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


def failure_line(record: dict[str, Any], width: int = 160) -> str:
    """`FAILED key: ErrorType: first line of the message` cut to `width` characters."""
    error = str(record.get("error") or "unknown error").strip().splitlines()[0]
    text = f"FAILED {record.get('key')}: {error}"
    return text if len(text) <= width else text[: width - 1] + "…"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as strict JSON (NaN → string) via a temp file and `os.replace`."""
    from rankwise.train.logger import dumps

    text = dumps(data, indent=2, sort_keys=True)
    atomic_write(path, text.encode("utf-8"))


def environment(command: str | None = None) -> dict[str, Any]:
    """Machine, library versions, git commit, date and command, attached to every result."""
    import numpy
    import torch

    import rankwise
    from rankwise.analysis.precision import resolve_precision

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    device = "cpu"
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command or " ".join(sys.argv),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "rankwise": rankwise.__version__,
        "git_commit": commit,
        "precision_auto": resolve_precision("auto", "cuda" if device != "cpu" else "cpu"),
    }


def load_results(out_dir: Path) -> list[dict[str, Any]]:
    """All finished cell results under `out_dir/cells`, in key order."""
    cells = Path(out_dir) / "cells"
    results = []
    for p in sorted(cells.glob("*.json")) if cells.exists() else []:
        try:
            r = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue  # a torn write cannot happen (atomic), but a hand-edited file may be broken
        if r.get("status") == "done":
            results.append(r)
    return results


def run_cells(
    cells: Iterable[Cell],
    runner: Runner,
    out_dir: Path,
    *,
    resume: bool = True,
    command: str | None = None,
    progress: bool = True,
    keep_going: bool = True,
) -> list[dict[str, Any]]:
    """Run every cell not already finished in `out_dir`, return all results (finished + new).

    Each result is `{"key", "params", "status": "done"|"failed", "result", "seconds", "env"}`.
    A failed cell is recorded with its traceback and retried on the next run.
    """
    out_dir = Path(out_dir)
    cells = list(cells)
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate cell keys in suite")
    env = environment(command)
    results: list[dict[str, Any]] = []
    from rich.progress import Progress

    with Progress(disable=not progress, transient=False) as bar:
        task = bar.add_task("bench", total=len(cells))
        for cell in cells:
            path = out_dir / "cells" / cell.filename
            if resume and path.exists():
                try:
                    old = json.loads(path.read_text())
                except json.JSONDecodeError:
                    old = {}
                if old.get("status") == "done" and old.get("identity") == cell.identity:
                    results.append(old)
                    bar.advance(task)
                    continue
            bar.update(task, description=cell.key)
            start = time.perf_counter()
            try:
                result = runner(cell)
                record = {"status": "done", "result": result}
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - recorded and reported, suite goes on
                if not keep_going:
                    raise
                record = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000],
                          "traceback": traceback.format_exc()}
            record.update(key=cell.key, params=cell.params, identity=cell.identity, env=env,
                          seconds=round(time.perf_counter() - start, 3))
            write_json_atomic(path, record)
            results.append(record)
            bar.advance(task)
    return results
