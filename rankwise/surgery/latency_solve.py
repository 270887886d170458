"""The latency allocator's core: pick one option per layer to meet a time budget, losing the
least energy (a multiple-choice knapsack over measured times).

Each layer offers options `(ms, lost)`; option 0 is the dense layer (`lost = 0`). Options not
faster than `(1 − min_gain)·dense_ms` are dropped first — a factorization slower than the dense
layer it replaces is never chosen — and so are dominated ones (slower *and* lossier than
another). On each layer's lower convex hull of (ms, lost), a step from one option to the next
faster one costs `Δlost / Δms` energy per millisecond saved; the greedy takes the cheapest step
over all layers until `fixed_ms + Σ ms ≤ budget_ms` (the LP-relaxation optimum up to the last
step), then spends the time left: while some layer can move to a less lossy option that still
fits, the move that recovers the most energy is made.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Solution:
    """`picks[i]`: index into layer i's option list; `total_ms` includes `fixed_ms`."""

    picks: list[int]
    total_ms: float
    lost: float
    met: bool


def usable(options: Sequence[tuple[float, float]], min_gain: float) -> list[int]:
    """Indices of options worth considering: dense (0) plus the non-dominated options that are
    at least `min_gain` faster than dense, sorted by ms descending (lost ascending)."""
    dense_ms = options[0][0]
    idx = [j for j in range(1, len(options))
           if options[j][0] < (1.0 - min_gain) * dense_ms and math.isfinite(options[j][0])]
    idx.sort(key=lambda j: (options[j][0], options[j][1]))
    front: list[int] = []  # ascending ms: keep only those losing strictly less than all faster
    best = math.inf
    for j in idx:
        if options[j][1] < best:
            front.append(j)
            best = options[j][1]
    return [0, *sorted(front, key=lambda j: -options[j][0])]


def hull(options: Sequence[tuple[float, float]], order: list[int]) -> list[int]:
    """Lower convex hull of `order` (ms descending) in (ms saved, lost): slopes non-decreasing."""
    out: list[int] = []
    for j in order:
        while len(out) >= 2:
            a, b = options[out[-2]], options[out[-1]]
            c = options[j]
            # slope a→b must be ≤ slope b→c (lost per ms saved), else drop b
            if (b[1] - a[1]) * (b[0] - c[0]) > (c[1] - b[1]) * (a[0] - b[0]):
                out.pop()
            else:
                break
        out.append(j)
    return out


def solve(layers: Sequence[Sequence[tuple[float, float]]], budget_ms: float,
          fixed_ms: float = 0.0, min_gain: float = 0.03) -> Solution:
    """Per-layer picks meeting `fixed_ms + Σ ms ≤ budget_ms` with the least Σ lost.

    `layers[i][j] = (ms, lost)`, `layers[i][0]` the dense option. If the budget cannot be met,
    every layer takes its fastest usable option and `met` is False.
    """
    orders = [usable(opts, min_gain) for opts in layers]
    hulls = [hull(opts, order) for opts, order in zip(layers, orders, strict=True)]
    picks = [0] * len(layers)
    pos = [0] * len(layers)
    total = fixed_ms + sum(opts[0][0] for opts in layers)
    heap: list[tuple[float, int]] = []

    def push(i: int) -> None:
        h = hulls[i]
        if pos[i] + 1 < len(h):
            a, b = layers[i][h[pos[i]]], layers[i][h[pos[i] + 1]]
            heapq.heappush(heap, ((b[1] - a[1]) / max(a[0] - b[0], 1e-12), i))

    for i in range(len(layers)):
        push(i)
    while total > budget_ms and heap:
        _, i = heapq.heappop(heap)
        old = layers[i][hulls[i][pos[i]]]
        pos[i] += 1
        picks[i] = hulls[i][pos[i]]
        total += layers[i][picks[i]][0] - old[0]
        push(i)
    if total <= budget_ms:
        total = _give_back(layers, orders, picks, total, budget_ms)
    lost = sum(layers[i][p][1] for i, p in enumerate(picks))
    return Solution(picks, total, lost, total <= budget_ms * (1 + 1e-12))


def _give_back(layers: Sequence[Sequence[tuple[float, float]]], orders: list[list[int]],
               picks: list[int], total: float, budget_ms: float) -> float:
    """Spend leftover time: repeatedly make the single move that regains the most energy."""
    while True:
        best = (0.0, -1, -1)
        for i, order in enumerate(orders):
            cur_ms, cur_lost = layers[i][picks[i]]
            for j in order:
                ms, lost = layers[i][j]
                gain = cur_lost - lost
                if gain > best[0] and total - cur_ms + ms <= budget_ms:
                    best = (gain, i, j)
        if best[1] < 0:
            return total
        _, i, j = best
        total += layers[i][j][0] - layers[i][picks[i]][0]
        picks[i] = j


__all__ = ["Solution", "hull", "solve", "usable"]
