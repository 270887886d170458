"""Run directories: who may write into `--out`, and how a replacement lands safely.

Rules (`prepare_run_dir`):
- an empty or missing directory is a fresh run;
- `resume=True` needs `checkpoint.pt` there;
- `overwrite=True` on a non-empty directory returns "overwrite": the caller trains into a
  sibling (`rankwise.io.atomic.atomic_dir`) swapped in only when the new run has finished, so a
  failed overwrite keeps the old run;
- anything else that holds a run (checkpoint, weights, summary, epoch rows) is refused;
  leftovers of an attempt that never finished an epoch (`config.json`, a metrics file without
  epoch rows) are cleared and the run starts fresh.
A `RunLock` (an `flock`ed `.NAME.lock` beside the directory) is held while a run writes: a
second writer is refused. Stale `*.tmp` files of killed atomic writes are removed on start.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from rankwise.errors import CheckpointError, ConfigError

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
# What a run that never finished an epoch may leave behind (safe to clear on a fresh start).
_LEFTOVERS = {"config.json", METRICS, "tb"}


class RunLock:
    """Exclusive lock on run directory `out` (a `.NAME.lock` file beside it, `flock`ed).

    The kernel drops an `flock` when its process dies, so a killed run never leaves a stale
    lock. `acquire` raises ConfigError naming the holder's pid when another process holds it.
    """

    def __init__(self, out: str | os.PathLike[str]) -> None:
        out = Path(out).absolute()
        self.path = out.parent / f".{out.name}.lock"
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ConfigError(f"{self.path.parent / self.path.name[1:-5]} is being written "
                                  f"by another run (pid {holder}, lock {self.path}); wait for "
                                  "it to finish or choose another --out") from None
            try:  # the file we locked may have been unlinked by a releasing holder: retry
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _has_epoch_rows(path: Path) -> bool:
    if not path.is_file():
        return False
    for line in path.read_text(errors="replace").splitlines():
        try:
            if json.loads(line).get("event") == "epoch":
                return True
        except (json.JSONDecodeError, AttributeError):
            return True  # an unreadable metrics file: treat as a run, never delete it
    return False


def clean_stale_temporaries(out: Path) -> list[Path]:
    """Remove the `*.tmp` files killed atomic writes left in `out`, and the siblings of killed
    directory swaps (`remove_stale`). Call only while holding the `RunLock` of `out`."""
    from rankwise.io.atomic import remove_stale

    removed = []
    if out.is_dir():
        for p in out.glob("*.tmp"):
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed + remove_stale(out)


def prepare_run_dir(out: str | os.PathLike[str], resume: bool = False,
                    overwrite: bool = False) -> str:
    """Check `out` against the rules above: "fresh", "resume" or "overwrite" (train elsewhere
    and swap in at the end). Call while holding the `RunLock`."""
    out = Path(out)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict: resume continues the run in "
                          f"{out}, overwrite replaces it; give one")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a run directory; choose another --out")
    clean_stale_temporaries(out)
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise CheckpointError(f"{out / CHECKPOINT} not found; cannot resume: train without "
                                  "--resume, or point --out at the run directory that holds "
                                  "checkpoint.pt")
        return "resume"
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        return "fresh"
    if overwrite:
        return "overwrite"
    if set(entries) <= _LEFTOVERS and not _has_epoch_rows(out / METRICS):
        for name in entries:  # an attempt killed before its first checkpoint
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        return "fresh"
    shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
    raise ConfigError(f"--out {out} already holds a run ({shown}); pass --resume to continue "
                      "it, --overwrite to replace it once the new run has finished, or choose "
                      "another --out")


__all__ = ["RunLock", "clean_stale_temporaries", "prepare_run_dir"]
