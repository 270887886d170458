"""Learning-rate schedules stepped per iteration: linear warm-up, then step / cosine / constant."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

from rankwise.errors import ConfigError


class LRFactor:
    """Multiplier of the base lr at global step `s` (0-based), a picklable-free plain object.

    Warm-up: `(s + 1) / warmup_steps` for `s < warmup_steps`. Then `step`: `gamma ** k` with k
    the number of milestones (in steps) `<= s`; `cosine`: `0.5 (1 + cos(π t))`, t the fraction
    of post-warm-up steps done (reaches 0 at `total_steps`); `none`: 1. Fields are plain ints,
    floats and lists so `LambdaLR.state_dict()` stays loadable with `weights_only=True`.
    """

    def __init__(self, schedule: str, total_steps: int, warmup_steps: int = 0,
                 milestone_steps: Sequence[int] = (), gamma: float = 0.1) -> None:
        if schedule not in ("step", "cosine", "none"):
            raise ConfigError(f"lr schedule {schedule!r} unknown; use step, cosine or none")
        self.schedule = schedule
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.milestone_steps = sorted(int(m) for m in milestone_steps)
        self.gamma = float(gamma)

    def __call__(self, s: int) -> float:
        if s < self.warmup_steps:
            return (s + 1) / self.warmup_steps
        if self.schedule == "step":
            return self.gamma ** sum(1 for m in self.milestone_steps if s >= m)
        if self.schedule == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, (s - self.warmup_steps) / span)
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, epochs: int,
                   steps_per_epoch: int, milestones: Sequence[int] = (), gamma: float = 0.1,
                   warmup_epochs: float = 0.0) -> LambdaLR:
    """A `LambdaLR` over `optimizer` to be stepped once per iteration.

    `milestones` and `warmup_epochs` are in epochs and converted to steps with `steps_per_epoch`.
    """
    factor = LRFactor(schedule, total_steps=epochs * steps_per_epoch,
                      warmup_steps=round(warmup_epochs * steps_per_epoch),
                      milestone_steps=[m * steps_per_epoch for m in milestones], gamma=gamma)
    return LambdaLR(optimizer, factor)
