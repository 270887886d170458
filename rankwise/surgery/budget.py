"""Global rank budgets: choose per-layer ranks for a whole-model params or MACs target.

`allocate_budget` is greedy over all candidate layers by retained energy gained per unit of cost
(param or MAC), not one uniform ratio; `surgery.decompose` calls it for `ParamsBudget` /
`MacsBudget` policies (`rankwise.surgery.rank`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from rankwise.errors import ConfigError, RankError
from rankwise.linalg.spectra import energy_curve

Metric = Literal["params", "macs"]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)

def to_layer_rank(rank: tuple[int, ...]) -> int | tuple[int, ...]:
    """A policy's tuple as a layer's rank: an int for one-dimensional formats, else the tuple."""
    return rank[0] if len(rank) == 1 else tuple(rank)


def retained_energy(spectra: Sequence[torch.Tensor], rank: tuple[int, ...]) -> float:
    """Energy fraction kept at `rank`: `1 − Σ_d (1 − e_d(r_d))`, clipped at 0.

    `e_d` is dimension d's cumulative σ² fraction; for one dimension this is exact (Eckart-Young),
    for several it is the HOSVD lower bound.
    """
    lost = 0.0
    for s, r in zip(spectra, rank, strict=True):
        c = energy_curve(s)
        lost += 1.0 - float(c[min(r, c.numel()) - 1])
    return max(0.0, 1.0 - lost)


@dataclass(frozen=True)
class BudgetCandidate:
    """One layer the allocator may factorize.

    `cost(rank_tuple)` is the factorized cost (params or MACs, the allocator's metric) at that
    rank; `dense_cost` the dense layer's cost in the same unit. Cost must not decrease with rank.
    """

    name: str
    spectra: list[torch.Tensor]
    max_rank: tuple[int, ...]
    dense_cost: int
    cost: Callable[[tuple[int, ...]], int] = field(compare=False)


def allocate_budget(
    candidates: Sequence[BudgetCandidate],
    target: float,
    metric: Metric = "params",
    fixed_cost: int = 0,
    granularity: int = 256,
) -> list[tuple[int, ...] | None]:
    """Per-layer ranks meeting `(Σ cost after + fixed_cost) ≤ target · (Σ dense + fixed_cost)`.

    Greedy: every layer starts at rank 1 in every dimension (dense if even that does not save),
    then the step with the largest energy gained per unit of cost is taken while it fits. A step
    raises one dimension by a chunk of `ceil(max_rank_d / granularity)` (so ≤ ~granularity steps
    per dimension, e.g. ResNet-50's 2048 in chunks of 8; a chunk is ranked by its average gain per
    cost, so keep `granularity` large — ranks ≤ granularity move one at a time and the greedy is
    exact for concave energy and linear cost); a chunk that does not fit is retried
    one rank at a time, a single step that does not fit is dropped while others go on. Energy is
    each layer's retained σ² fraction (`retained_energy`; dimensions add, so a step in dimension
    d gains `e_d(r+k) − e_d(r)`). A step whose cost would reach the dense cost turns the layer
    dense instead (gain: all energy still lost, cost: dense − current). Stale heap entries are
    skipped by a per-layer version. Returns one rank tuple per candidate, `None` = keep dense.
    Raises `ConfigError` if the target is below what rank 1 everywhere achieves.
    """
    _require(metric in ("params", "macs"), f"budget metric must be params or macs, got {metric!r}")
    _require(0.0 < target <= 1.0, f"{metric} budget must be in (0, 1], got {target}")
    ok = fixed_cost >= 0 and granularity >= 1
    _require(ok, f"need fixed_cost >= 0 and granularity >= 1, got {fixed_cost}, {granularity}")
    n = len(candidates)
    curves: list[list[list[float]]] = []
    for c in candidates:
        if len(c.spectra) != len(c.max_rank) or not c.max_rank:
            raise RankError(f"{c.name}: {len(c.spectra)} spectra for max_rank {c.max_rank}")
        curves.append([energy_curve(s).tolist() for s in c.spectra])

    def energy(i: int, d: int, r: int) -> float:
        cv = curves[i][d]
        return cv[min(r, len(cv)) - 1]

    ranks = [[1] * len(c.max_rank) for c in candidates]
    dense = [False] * n
    cost = [0] * n
    for i, c in enumerate(candidates):
        cost[i] = int(c.cost(tuple(ranks[i])))
        if cost[i] >= c.dense_cost:
            dense[i], cost[i] = True, int(c.dense_cost)
    before = fixed_cost + sum(int(c.dense_cost) for c in candidates)
    spent = fixed_cost + sum(cost)
    if before <= 0:
        return [None] * n
    budget = target * before * (1.0 + 1e-12)
    if spent > budget:
        raise ConfigError(
            f"{metric} budget {target} is unreachable: rank 1 in every candidate layer (dense "
            f"where that does not save) already keeps {spent / before:.4f} of the model's "
            f"{metric}; use a ratio >= {math.ceil(spent / before * 1e4) / 1e4}"
        )
    chunk = [[max(1, math.ceil(m / granularity)) for m in c.max_rank] for c in candidates]
    version = [0] * n
    heap: list[tuple[float, int, int, int, int]] = []

    def push(i: int) -> None:
        c = candidates[i]
        lost = sum(1.0 - energy(i, d, r) for d, r in enumerate(ranks[i]))
        for d, r in enumerate(ranks[i]):
            if r >= c.max_rank[d]:
                continue
            new = list(ranks[i])
            new[d] = min(r + chunk[i][d], c.max_rank[d])
            new_cost = int(c.cost(tuple(new)))
            if new_cost >= c.dense_cost:  # this step turns the layer dense
                gain, delta = lost, int(c.dense_cost) - cost[i]
            else:
                gain, delta = energy(i, d, new[d]) - energy(i, d, r), new_cost - cost[i]
            if gain <= 0.0:
                continue  # σ is descending: no later step of this dimension gains either
            prio = math.inf if delta <= 0 else gain / delta
            heapq.heappush(heap, (-prio, i, d, version[i], new[d]))

    for i in range(n):
        if not dense[i]:
            push(i)
    while heap:
        _, i, d, ver, new_r = heapq.heappop(heap)
        if ver != version[i] or dense[i]:
            continue
        c = candidates[i]
        new = list(ranks[i])
        new[d] = new_r
        new_cost = int(c.cost(tuple(new)))
        to_dense = new_cost >= c.dense_cost
        delta = (int(c.dense_cost) if to_dense else new_cost) - cost[i]
        if spent + delta > budget:
            if chunk[i][d] > 1 and new_r - ranks[i][d] > 1:
                chunk[i][d] = 1  # retry this dimension one rank at a time
                version[i] += 1
                push(i)
            continue
        spent += delta
        version[i] += 1
        if to_dense:
            dense[i], cost[i] = True, int(c.dense_cost)
        else:
            ranks[i], cost[i] = new, new_cost
            push(i)
    return [None if dense[i] else tuple(ranks[i]) for i in range(n)]
