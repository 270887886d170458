"""Run logging: `metrics.jsonl` (one JSON object per line), optional TensorBoard, rich progress."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep the line parseable by strict readers
    return v


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
            f.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
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
