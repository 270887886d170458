"""Run logging: `metrics.jsonl` (one JSON object per line), optional TensorBoard, rich progress."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"


def jsonable(v: Any) -> Any:
    """`v` with every non-finite float replaced by its string ("nan", "inf"), recursively:
    JSON has no NaN/Inf, and strict readers reject Python's `NaN` tokens."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def dumps(v: Any, **kw: Any) -> str:
    """Strict JSON text of `v` (non-finite floats as strings, other leaves via `str`)."""
    return json.dumps(jsonable(v), allow_nan=False, default=str, **kw)


class RunLogger:
    """Appends metric rows to `out_dir/metrics.jsonl` and mirrors scalars to TensorBoard.

    `enabled=False` (non-zero DDP ranks) makes every call a no-op. TensorBoard is used only
    when `tensorboard=True` and `torch.utils.tensorboard` imports; otherwise a warning.
    """

    def __init__(self, out_dir: Path, enabled: bool = True, tensorboard: bool = False) -> None:
        self.path = Path(out_dir) / METRICS
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("TensorBoard requested but `tensorboard` is not installed "
                              "(pip install tensorboard); logging to metrics.jsonl only",
                              stacklevel=2)
            else:
                self.writer = SummaryWriter(str(Path(out_dir) / "tb"))

    def log(self, row: dict[str, Any], step: int) -> None:
        """Append `row` (JSON-serialisable values) and send its numbers to TensorBoard."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(dumps(row) + "\n")
        if self.writer is not None:
            kind = row.get("event", "train")
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self.writer.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    """All rows of `out_dir/metrics.jsonl`, in order."""
    path = Path(out_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def repair_metrics(out_dir: str | Path, epoch: int, global_step: int,
                   epoch_rows: list[dict[str, Any]] | None = None) -> int:
    """Make `out_dir/metrics.jsonl` agree with a checkpoint taken after `epoch` / `global_step`.

    Drops rows logged after the checkpoint (a killed epoch), keeps one row per epoch (the
    checkpoint's own `epoch_rows` when it has them, else the last one logged) and restores epoch
    rows a kill between checkpoint and log lost. Rewritten atomically; returns rows dropped.
    """
    from rankwise.io.atomic import atomic_write

    path = Path(out_dir) / METRICS
    rows = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill
    steps = [r for r in rows if r.get("event") != "epoch" and int(r.get("step", 0)) <= global_step]
    by_epoch: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r.get("event") == "epoch" and int(r.get("epoch", 0)) <= epoch:
            by_epoch[int(r["epoch"])] = r
    for r in epoch_rows or []:
        by_epoch[int(r["epoch"])] = {"event": "epoch", **r}
    kept = sorted(steps + list(by_epoch.values()),
                  key=lambda r: (int(r.get("step", 0)), r.get("event") == "epoch"))
    dropped = len(rows) - len(kept)
    if dropped or len(kept) != len(rows) or path.is_file():
        atomic_write(path, "".join(dumps(r) + "\n" for r in kept).encode())
    return max(dropped, 0)


def make_progress(enabled: bool):
    """A rich Progress (stderr) with loss/acc/img-per-s fields, or None when disabled or when
    stderr is not a terminal."""
    if not enabled or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f} "
                               "{task.fields[ips]:.0f} img/s"),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=True)


def epoch_line(m: dict[str, Any], epochs: int) -> str:
    """`epoch 3/164  train loss 0.912 acc 68.1%  test loss 0.850 acc 71.0%  lr 0.1  4210 img/s`."""
    text = f"epoch {m['epoch']}/{epochs}  train loss {m['train_loss']:.3f}"
    if "train_acc" in m:
        text += f" acc {100 * m['train_acc']:.1f}%"
    if "test_loss" in m:
        text += f"  test loss {m['test_loss']:.3f}"
    if "test_acc" in m:
        text += f" acc {100 * m['test_acc']:.1f}%"
    return text + f"  lr {m['lr']:.3g}  {m['images_per_s']:.0f} img/s"
