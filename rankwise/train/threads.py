"""How many torch CPU threads a training uses: the number asked for, or else the free cores.

More torch threads than free cores is the costly mistake on a shared CPU: with another process
busy on one of two cores, a CIFAR ResNet-20 fp32 training step (batch 128) took 0.72-0.82 s at
two threads against 0.52-0.53 s at one (2-core AVX2 EPYC, two runs each, interleaved). With
`num_threads=None` the trainer therefore counts the cores this process may run on (its affinity
mask) that were idle over a short sample of /proc/stat, and runs that many threads (at least 1,
at most torch's default). `OMP_NUM_THREADS` set in the environment is the user's choice and is
left alone, as is everything where /proc/stat cannot be read.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

PROC_STAT = Path("/proc/stat")
SAMPLE_S = 0.1  # 10 scheduler ticks per CPU at USER_HZ 100


def _cpu_times(cpus: set[int]) -> dict[int, tuple[int, int]] | None:
    """`{cpu: (idle ticks, total ticks)}` of the given CPUs from /proc/stat, None if unreadable."""
    try:
        lines = PROC_STAT.read_text().splitlines()
    except OSError:
        return None
    out = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(v) for v in fields[:8]]
            out[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))  # idle + iowait, all
    return out or None


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity mask; every CPU where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def free_cores(sample_s: float = SAMPLE_S) -> int | None:
    """Idle CPUs among `allowed_cpus()` over `sample_s` seconds (the idle fractions summed and
    rounded, at least 1); None where /proc/stat cannot be read."""
    cpus = allowed_cpus()
    before = _cpu_times(cpus)
    if before is None:
        return None
    time.sleep(sample_s)
    after = _cpu_times(cpus) or {}
    idle = 0.0
    for cpu, (idle0, total0) in before.items():
        idle1, total1 = after.get(cpu, (idle0, total0))
        idle += (idle1 - idle0) / (total1 - total0) if total1 > total0 else 1.0
    return max(1, int(idle + 0.5))


def set_threads(requested: int | None) -> int:
    """Set torch's intra-op threads to `requested`, or, when None and `OMP_NUM_THREADS` is not
    set, to `min(torch's default, free_cores())`; returns the threads in use."""
    if requested:
        torch.set_num_threads(requested)
    elif "OMP_NUM_THREADS" not in os.environ:
        free = free_cores()
        if free is not None and free < torch.get_num_threads():
            torch.set_num_threads(free)
    return torch.get_num_threads()


__all__ = ["allowed_cpus", "free_cores", "set_threads"]
