"""Rank policies: how much of each layer to keep.

A policy is a frozen dataclass with `select(spectra, max_rank, shapes=None) -> tuple[int, ...]`:
`spectra[i]` is the full descending spectrum that rank dimension `i` is read from
(`FactorizedLayer.spectra`), `max_rank[i]` its limit (`FactorizedLayer.max_rank`), and the result
is clipped to `[1, max_rank[i]]` per dimension. `str(policy)` is the canonical CLI form and
`parse_rank(str(policy)) == policy`.

- `Fixed`, `Ratio` never read the spectra: callers may pass `spectra=[]` and skip the SVD
  (`needs_spectra = False`).
- `VBMF` needs the shape `(p, q)` of the matrix each spectrum came from (EVBMF depends only on the
  full spectrum and the shape): pass `shapes=[(p, q), ...]` or call
  `select_matrices(matrices, max_rank)` with the unfoldings themselves (`needs_shapes = True`).
- `ParamsBudget`, `MacsBudget` are global (`is_global = True`): they are not applied per layer but
  resolved over all candidate layers by `allocate_budget` (called by `surgery.decompose`).
"""

from __future__ import annotations

import math
import re
from abc import ABC
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import ClassVar, Literal

import torch

from rankwise.errors import ConfigError, RankError
from rankwise.linalg.spectra import (
    effective_rank,
    energy_rank,
    ratio_rank,
    singular_values,
    stable_rank,
    value_threshold_rank,
)
from rankwise.linalg.vbmf import evbmf_rank

# The allocator lives in `rankwise.surgery.budget`; re-exported because budgets are rank policies.
from rankwise.surgery.budget import BudgetCandidate as BudgetCandidate
from rankwise.surgery.budget import allocate_budget as allocate_budget
from rankwise.surgery.budget import retained_energy as retained_energy
from rankwise.surgery.budget import to_layer_rank as to_layer_rank
from rankwise.surgery.latency_budget import parse_latency_budget

Metric = Literal["params", "macs"]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _fmt(x: float) -> str:
    return repr(float(x))


class RankPolicy(ABC):  # noqa: B024 - per-dimension policies override `_rank_1d`
    """Base of all policies; subclasses override `_rank_1d` (or `select`)."""

    needs_spectra: ClassVar[bool] = True
    needs_shapes: ClassVar[bool] = False
    is_global: ClassVar[bool] = False

    def select(
        self,
        spectra: Sequence[torch.Tensor],
        max_rank: tuple[int, ...],
        shapes: Sequence[tuple[int, int]] | None = None,
    ) -> tuple[int, ...]:
        """One rank per rank dimension, each in `[1, max_rank[i]]`."""
        max_rank = tuple(int(m) for m in max_rank)
        if not max_rank or min(max_rank) < 1:
            raise RankError(f"max_rank must be a non-empty tuple of ints >= 1, got {max_rank}")
        if self.needs_spectra and len(spectra) != len(max_rank):
            raise RankError(
                f"{self} needs one spectrum per rank dimension: got {len(spectra)} spectra for "
                f"max_rank {max_rank}"
            )
        if self.needs_shapes and (shapes is None or len(shapes) != len(max_rank)):
            raise ConfigError(
                f"{self} needs the (p, q) shape of each matrix the spectra came from: pass "
                "shapes=[...] or use select_matrices(matrices, max_rank)"
            )
        out = []
        for i, m in enumerate(max_rank):
            s = spectra[i] if self.needs_spectra else None
            shape = shapes[i] if shapes is not None and self.needs_shapes else None
            out.append(min(max(1, self._rank_1d(i, s, m, shape)), m))
        return tuple(out)

    def select_matrices(
        self, matrices: Sequence[torch.Tensor], max_rank: tuple[int, ...] | None = None
    ) -> tuple[int, ...]:
        """`select` from the matrices (e.g. Tucker unfoldings `(p, q)`), one per rank dimension.

        `max_rank` defaults to `min(p, q)` of each matrix.
        """
        if max_rank is None:
            max_rank = tuple(min(m.shape[-2:]) for m in matrices)
        spectra = [singular_values(m) for m in matrices]
        shapes = [(int(m.shape[-2]), int(m.shape[-1])) for m in matrices]
        return self.select(spectra, max_rank, shapes=shapes)

    def _rank_1d(
        self, dim: int, s: torch.Tensor | None, max_rank: int, shape: tuple[int, int] | None
    ) -> int:
        raise NotImplementedError


@dataclass(frozen=True)
class Fixed(RankPolicy):
    """The same rank for every layer: an int for every dimension, or one per dimension."""

    rank: int | tuple[int, ...]
    needs_spectra: ClassVar[bool] = False

    def __post_init__(self) -> None:
        def as_int(r):  # accept numpy/torch integers, reject bools and floats
            return int(r) if isinstance(r, Integral) and not isinstance(r, bool) else r

        if isinstance(self.rank, (list, tuple)):
            object.__setattr__(self, "rank", tuple(as_int(r) for r in self.rank))
        else:
            object.__setattr__(self, "rank", as_int(self.rank))
        ranks = self.rank if isinstance(self.rank, tuple) else (self.rank,)
        bad = not ranks or any(type(r) is not int or r < 1 for r in ranks)
        _require(not bad, f"fixed rank must be an int >= 1 (or a tuple of them), got {self.rank}")

    def _rank_1d(self, dim, s, max_rank, shape) -> int:
        if not isinstance(self.rank, tuple):
            return self.rank
        return self.rank[dim]

    def select(self, spectra, max_rank, shapes=None) -> tuple[int, ...]:
        if isinstance(self.rank, tuple) and len(self.rank) != len(tuple(max_rank)):
            raise RankError(
                f"fixed rank {self.rank} has {len(self.rank)} entries but the format has "
                f"{len(tuple(max_rank))} rank dimensions (max_rank {tuple(max_rank)})"
            )
        return super().select(spectra, max_rank, shapes)

    def __str__(self) -> str:
        ranks = self.rank if isinstance(self.rank, tuple) else (self.rank,)
        return "fixed:" + ",".join(str(r) for r in ranks)


@dataclass(frozen=True)
class Ratio(RankPolicy):
    """Keep `max(1, int(fraction · max_rank))` per dimension (SFW's sweep with fraction = 1 − s)."""

    fraction: float
    needs_spectra: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _require(0.0 < self.fraction <= 1.0, f"rank ratio must be in (0, 1], got {self.fraction}")

    def _rank_1d(self, dim, s, max_rank, shape) -> int:
        return ratio_rank(max_rank, self.fraction)

    def __str__(self) -> str:
        return f"ratio:{_fmt(self.fraction)}"


@dataclass(frozen=True)
class Energy(RankPolicy):
    """Smallest rank keeping a fraction `threshold ∈ (0, 1]` of Σσ² (TRP: 0.9 in training)."""

    threshold: float

    def __post_init__(self) -> None:
        _require(0.0 < self.threshold <= 1.0, f"energy must be in (0, 1], got {self.threshold}")

    def _rank_1d(self, dim, s, max_rank, shape) -> int:
        return energy_rank(s, self.threshold)

    def __str__(self) -> str:
        return f"energy:{_fmt(self.threshold)}"


@dataclass(frozen=True)
class ValueThreshold(RankPolicy):
    """Keep singular values `σ ≥ t` (absolute; TRP post-training uses t = 0.05)."""

    t: float

    def __post_init__(self) -> None:
        ok = self.t >= 0.0 and math.isfinite(self.t)
        _require(ok, f"value threshold must be finite and >= 0, got {self.t}")

    def _rank_1d(self, dim, s, max_rank, shape) -> int:
        return value_threshold_rank(s, self.t)

    def __str__(self) -> str:
        return f"value:{_fmt(self.t)}"


@dataclass(frozen=True)
class EffectiveRank(RankPolicy):
    """`round(erank · scale)` (Roy & Vetterli effective rank; ties round up)."""

    scale: float = 1.0

    def __post_init__(self) -> None:
        ok = self.scale > 0.0 and math.isfinite(self.scale)
        _require(ok, f"erank scale must be finite and > 0, got {self.scale}")

    def _rank_1d(self, dim, s, max_rank, shape) -> int:
        return _round_half_up(effective_rank(s) * self.scale)

    def __str__(self) -> str:
        return "erank" if self.scale == 1.0 else f"erank:{_fmt(self.scale)}"


@dataclass(frozen=True)
class StableRank(RankPolicy):
    """`round(‖W‖_F² / ‖W‖₂² · scale)` (Cuttlefish; ties round up)."""

    scale: float = 1.0

    def __post_init__(self) -> None:
        ok = self.scale > 0.0 and math.isfinite(self.scale)
        _require(ok, f"stable-rank scale must be finite and > 0, got {self.scale}")

    def _rank_1d(self, dim, s, max_rank, shape) -> int:
        return _round_half_up(stable_rank(s) * self.scale)

    def __str__(self) -> str:
        return "stable" if self.scale == 1.0 else f"stable:{_fmt(self.scale)}"


@dataclass(frozen=True)
class VBMF(RankPolicy):
    """Analytic empirical VBMF rank (Nakajima et al. 2013) of each matrix; needs `shapes`."""

    needs_shapes: ClassVar[bool] = True

    def _rank_1d(self, dim, s, max_rank, shape) -> int:
        return evbmf_rank(s, shape)[0]

    def __str__(self) -> str:
        return "vbmf"


@dataclass(frozen=True)
class _Budget(RankPolicy):
    ratio: float
    metric: ClassVar[Metric]
    is_global: ClassVar[bool] = True

    def __post_init__(self) -> None:
        ok = 0.0 < self.ratio <= 1.0
        _require(ok, f"{self.metric} budget (after / before) must be in (0, 1], got {self.ratio}")

    def select(self, spectra, max_rank, shapes=None) -> tuple[int, ...]:
        raise ConfigError(
            f"{self} is a global budget: it is resolved over all layers at once by "
            "rankwise.surgery.decompose (rankwise.rank.allocate_budget), not per layer"
        )

    def __str__(self) -> str:
        return f"budget:{self.metric}={_fmt(self.ratio)}"


@dataclass(frozen=True)
class ParamsBudget(_Budget):
    """Whole-model target: parameters after / before (over candidates + everything else)."""

    metric: ClassVar[Metric] = "params"


@dataclass(frozen=True)
class MacsBudget(_Budget):
    """Whole-model target: MACs per sample after / before."""

    metric: ClassVar[Metric] = "macs"


ACCEPTED_FORMS = (
    "fixed:8 | 8 | fixed:16,8 (one per rank dimension) | ratio:0.25 | energy:0.9 | value:0.05 | "
    "erank | erank:1.5 | stable | stable:2 | vbmf | budget:params=0.3 | budget:macs=0.3 | "
    "budget:latency=0.5 | budget:latency_ms=120[,precision=bf16,batch=8,threads=1]"
)
_NUM = r"([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)"


def parse_rank(text: str) -> RankPolicy:
    """Parse a CLI rank string (see `ACCEPTED_FORMS`); raises `ConfigError` on a bad string."""
    try:
        return _parse(str(text).strip().lower().replace(" ", ""))
    except ConfigError as e:
        if "accepted forms" in str(e):
            raise
        raise ConfigError(f"rank {text!r}: {e}") from e


def _parse(t: str) -> RankPolicy:
    ints = re.fullmatch(r"(?:fixed:)?([0-9]+(?:,[0-9]+)*)", t)
    if ints:
        ranks = tuple(int(v) for v in ints.group(1).split(","))
        return Fixed(ranks[0] if len(ranks) == 1 else ranks)
    simple = {"ratio": Ratio, "energy": Energy, "value": ValueThreshold}
    scaled = {"erank": EffectiveRank, "stable": StableRank}
    m = re.fullmatch(r"(ratio|energy|value|erank|stable):" + _NUM, t)
    if m:
        cls = simple.get(m.group(1)) or scaled[m.group(1)]
        return cls(float(m.group(2)))
    if t in scaled:
        return scaled[t]()
    if t == "vbmf":
        return VBMF()
    m = re.fullmatch(r"budget:(params|macs)=" + _NUM, t)
    if m:
        return (ParamsBudget if m.group(1) == "params" else MacsBudget)(float(m.group(2)))
    latency = parse_latency_budget(t)
    if latency is not None:
        return latency
    raise ConfigError(f"cannot parse rank {t!r}; accepted forms: {ACCEPTED_FORMS}")
