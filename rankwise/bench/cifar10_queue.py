"""Run the `cifar10` suite's unfinished steps one after another: `rankwise bench cifar10
--action run`.

A step is runnable when every run it reads has finished: the runs its row `needs`, the earlier
steps of its row, and the run named by a `{macs:RUN}` placeholder. After each step the list is
worked out again, so a decomposition waiting for a TRP run starts as soon as that run is done
(short steps go before full trainings).
A training stopped after an epoch (`cifar10_steps.resumes`: its `checkpoint.pt`, or a
decomposition's `finetune/checkpoint.pt`) continues with `--resume`. Each step is claimed with
an `flock` (`.NAME.queue.lock` beside its run directory), so two queues started on two cores
never run the same step; a killed queue leaves no stale claim, and a step whose run another
process is writing (its run lock held) is left to that process. A step that fails is
not retried by the same queue, which goes on with the others.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rankwise.bench.cifar10 import BenchRow
from rankwise.bench.cifar10_steps import NotFinished, Step, resumes, step_done
from rankwise.errors import ConfigError


@dataclass(frozen=True)
class Ready:
    """A runnable step and its argv after `rankwise` (placeholders resolved)."""

    step: Step
    argv: tuple[str, ...]


def _argv(step: Step, runs_dir: Path) -> tuple[str, ...]:
    resume = ("--resume",) if resumes(step, runs_dir) else ()
    return (*step.resolved(runs_dir), *resume)


def runnable(rows: Sequence[BenchRow], runs_dir: Path) -> list[Ready]:
    """Unfinished steps whose inputs have all finished, each once, the short ones first: sweeps,
    compression and decompositions (at most a 10-epoch fine-tuning) before the full trainings,
    each group in `commands` order. A row's result lands as soon as its inputs exist, and no
    step waits behind a training that does not feed it."""
    runs_dir = Path(runs_dir)
    producer = {s.out: s for r in rows for s in r.steps}

    def finished(name: str) -> bool:
        step = producer.get(name)
        return step_done(step, runs_dir) if step else (runs_dir / name / "model.json").is_file()

    ready: dict[str, Ready] = {}
    for row in rows:
        for i, step in enumerate(row.steps):
            if step.out in ready or step_done(step, runs_dir):
                continue
            inputs = [*row.needs, *(s.out for s in row.steps[:i])]
            if step.waits_for:
                inputs.append(step.waits_for)
            if not all(finished(n) for n in inputs if n != step.out):
                continue
            try:
                ready[step.out] = Ready(step, _argv(step, runs_dir))
            except NotFinished:
                continue
    return sorted(ready.values(), key=lambda r: r.step.argv[0] == "train")


def being_written(out: Path) -> bool:
    """True while another process holds the run lock of `out` or of its fine-tuning run
    (`out/finetune`, a decomposition's): a training started by hand, or one a stopped queue
    left running. The queue leaves such a step alone instead of failing on its lock."""
    from rankwise.train.rundir import RunLock

    for run in (out, out / "finetune"):
        lock = RunLock(run)
        if not lock.path.exists():  # a holder keeps its lock file until it releases
            continue
        try:
            lock.acquire().release()
        except ConfigError:
            return True
    return False


def _subprocess(argv: Sequence[str]) -> int:
    return subprocess.run([sys.executable, "-m", "rankwise", *argv], check=False).returncode


def run_queue(rows: Sequence[BenchRow], runs_dir: Path,
              execute: Callable[[Sequence[str]], int] | None = None,
              log: Callable[[str], None] = print) -> dict[str, int]:
    """Run runnable steps until none is left (see the module docstring); returns
    `{run name: exit code}` of the steps this queue ran. `execute(argv)` runs one step
    (default: `python -m rankwise ARGV` in a subprocess) and returns its exit code."""
    from rankwise.train.rundir import RunLock

    execute = execute or _subprocess
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    ran: dict[str, int] = {}
    while True:
        todo = [r for r in runnable(rows, runs_dir) if r.step.out not in ran]
        for ready in todo:
            claim = RunLock(runs_dir / f"{ready.step.out}.queue")
            try:
                claim.acquire()
            except ConfigError:  # another queue runs it
                continue
            try:
                if step_done(ready.step, runs_dir) or being_written(runs_dir / ready.step.out):
                    continue  # finished while we looked, or another process writes it
                argv = _argv(ready.step, runs_dir)  # another queue may have stopped it since
                log(shlex.join(["rankwise", *argv]))
                ran[ready.step.out] = execute(argv)
                log(f"{ready.step.out}: exit {ran[ready.step.out]}")
            finally:
                claim.release()
            break  # work out the list again: this step may have unblocked others
        else:
            return ran


__all__ = ["Ready", "being_written", "run_queue", "runnable"]
