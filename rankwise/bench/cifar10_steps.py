"""One step of the `cifar10` suite: a `rankwise` CLI call writing one run directory.

A step's argv may name the runs directory as `{runs}` and another run's MACs reduction as
`{macs:RUN}` (RUN's model MACs after / before, read from its `trp_report.json` once RUN has
finished): how a decomposition is run at exactly the MACs a TRP run ended with.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

RUNS_DIR = Path("runs/cifar10")
MACS_PLACEHOLDER = re.compile(r"\{macs:([^}]+)\}")


@dataclass(frozen=True)
class Step:
    """One CLI call: `argv` after `rankwise`, writing the run directory `out` (a name under the
    runs directory); `done` is the file whose presence marks it finished."""

    argv: tuple[str, ...]
    out: str
    done: str

    def command(self, runs_dir: Path = RUNS_DIR) -> str:
        """The shell command line of `resolved(runs_dir)`."""
        return shlex.join(["rankwise", *self.resolved(runs_dir)])

    def resolved(self, runs_dir: Path = RUNS_DIR) -> list[str]:
        """`argv` with `{runs}` replaced by `runs_dir` and a `{macs:RUN}` placeholder by RUN's
        MACs after / before (`macs_of`); raises `NotFinished` while RUN has not finished."""
        def resolve(m: re.Match[str]) -> str:
            return f"{macs_of(Path(runs_dir) / m.group(1)):.4f}"

        return [MACS_PLACEHOLDER.sub(resolve, a) for a in self.args_in(runs_dir)]

    def args_in(self, runs_dir: Path) -> list[str]:
        """`argv` with `{runs}` replaced by `runs_dir` (placeholders left as they are)."""
        return [a.replace("{runs}", str(runs_dir)) for a in self.argv]

    @property
    def waits_for(self) -> str | None:
        """The run whose result the argv needs (a `{macs:RUN}` placeholder), or None."""
        return next((m.group(1) for a in self.argv if (m := MACS_PLACEHOLDER.search(a))), None)


class NotFinished(Exception):
    """A step needs the result of a run that has not finished yet."""


def macs_of(run_dir: Path) -> float:
    """A finished TRP run's model MACs after / before its decomposition (rankwise counting,
    `trp_report.json`); `NotFinished` if the run has not written it yet."""
    path = Path(run_dir) / "trp_report.json"
    if not path.is_file():
        raise NotFinished(f"{path} does not exist yet")
    counts = json.loads(path.read_text())["counting"]["rankwise"]
    return counts["macs_after"] / counts["macs_before"]


def step_done(step: Step, runs_dir: Path = RUNS_DIR) -> bool:
    """Whether `step` has finished (its marker file exists)."""
    return (Path(runs_dir) / step.out / step.done).is_file()


def resumes(step: Step, runs_dir: Path = RUNS_DIR) -> bool:
    """Whether `step` was stopped after an epoch of its training, so that it continues with
    `--resume`: a `train` step with `OUT/checkpoint.pt`, or a `decompose --finetune` step with
    `OUT/finetune/checkpoint.pt` (run again without `--resume`, either is refused)."""
    run = Path(runs_dir) / step.out
    checkpoint = {"train": run, "decompose": run / "finetune"}.get(step.argv[0])
    return checkpoint is not None and (checkpoint / "checkpoint.pt").is_file()


def command_or_wait(step: Step, runs_dir: Path) -> str:
    """`step.command`, or, while the run it waits for is unfinished, `# after RUN: <argv>`."""
    try:
        return step.command(runs_dir)
    except NotFinished:
        return f"# after {step.waits_for}: " + shlex.join(["rankwise", *step.args_in(runs_dir)])


__all__ = ["MACS_PLACEHOLDER", "RUNS_DIR", "NotFinished", "Step", "command_or_wait", "macs_of",
           "resumes", "step_done"]
