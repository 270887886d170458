"""Constraint base class and the vector (entry-wise) constraint sets used by SFW.

A constraint is a convex, compact set `C` centred at 0 given by a gauge norm: `C = {x : ‖x‖_C ≤ r}`.
It acts on a parameter group, i.e. a list of tensors treated as one concatenated vector
(`lmo`/`norm` also accept a single tensor and then return a single tensor).

Conventions (ZIB-IOL compression-aware-SFW, `optimizers/constraints.py`, code):
- `radius` r is the radius in the constraint's own norm; `diameter` D is the set's L2 diameter.
  Pass exactly one of them; the other follows from `D = ratio · r` with ratio 2 (L1, L2,
  K-support), `2√n` (L∞ over n entries) and `2√K` (K-sparse polytope).
- `lmo(g)` returns `argmin_{v ∈ C} ⟨g, v⟩`; a zero gradient gives the zero vector.
- `shift_to_feasible(x)` rescales `x` by `r / ‖x‖_C` when `‖x‖_C > r` (a valid map into `C`,
  not the Euclidean projection), so zero entries stay zero.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from rankwise.errors import ConfigError

Tensors = torch.Tensor | Sequence[torch.Tensor]


def as_list(x: Tensors) -> tuple[list[torch.Tensor], bool]:
    """`(list of tensors, True if x was a single tensor)`."""
    if isinstance(x, torch.Tensor):
        return [x], True
    xs = list(x)
    if not xs or not all(isinstance(t, torch.Tensor) for t in xs):
        raise ConfigError("a constraint acts on a tensor or a non-empty list of tensors")
    return xs, False


def flat(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenation of the flattened tensors, shape `(Σ numel,)`."""
    return torch.cat([t.reshape(-1) for t in xs])


def split_like(v: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Inverse of `flat`: views of `v` with the shapes of `like`."""
    out, start = [], 0
    for t in like:
        out.append(v[start:start + t.numel()].view(t.shape))
        start += t.numel()
    return out


def safe_div(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """`x / n` with `n` clamped away from 0 (a zero `x` then gives zeros, never NaN)."""
    return x / n.clamp_min(torch.finfo(n.dtype).tiny)


def resolve_k(k: int | float, n: int, what: str = "constraint") -> int:
    """K as a count: an `int` is a count (clamped to n), a `float` in (0, 1] a fraction of n.

    A fraction gives `max(1, int(k · n))` like the reference code. Note the reference treats any
    `k <= 1` as a fraction (so `1` means all); here `1` (int) is one and `1.0` (float) is all.
    """
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise ConfigError(f"{what}: k must be an int count or a float fraction, got {k!r}")
    if n < 1:
        raise ConfigError(f"{what}: the set has no entries (n={n})")
    if isinstance(k, int):
        if k < 1:
            raise ConfigError(f"{what}: k must be >= 1, got {k}; pass a float for a fraction")
        return min(k, n)
    if not 0.0 < k <= 1.0:
        raise ConfigError(f"{what}: a fractional k must be in (0, 1], got {k}")
    return max(1, min(n, int(k * n)))


def k_support_norm(x: torch.Tensor, k: int) -> float:
    """K-support norm (Argyriou et al. 2012) of the vector `x (d,)`, computed in float64.

    `‖x‖² = Σ_{i<k-r} z_i² + (Σ_{i≥k-r} z_i)² / (r+1)` with `z = |x|` sorted descending and the
    unique r in [0, k): evaluated as the minimum over the candidates r whose weights are feasible
    (`Σ_{i≥k-r} z_i / (r+1) ≥ z_{k-r}`), each of which is an upper bound of the variational
    form `min_θ Σ x_i²/θ_i` (r = 0 is always feasible). k = 1 gives L1, k = d gives L2.
    """
    z = torch.sort(x.detach().reshape(-1).abs().to(torch.float64), descending=True).values
    d = z.numel()
    k = max(1, min(int(k), d))
    cs = torch.cat([z.new_zeros(1), torch.cumsum(z, 0)])
    cs2 = torch.cat([z.new_zeros(1), torch.cumsum(z * z, 0)])
    r = torch.arange(k, dtype=torch.float64, device=z.device)
    head = (k - 1 - r).long()  # number of entries kept at full weight
    tail = cs[-1] - cs[head]
    cand = cs2[head] + tail * tail / (r + 1)
    feasible = tail / (r + 1) >= z[head] * (1 - 1e-12)
    feasible[0] = True
    return math.sqrt(max(0.0, float(cand[feasible].min())))


def _radius_diameter(
    radius: float | None, diameter: float | None, ratio: float, what: str
) -> tuple[float, float]:
    if (radius is None) == (diameter is None):
        raise ConfigError(f"{what}: pass exactly one of radius= or diameter=")
    value = float(radius if radius is not None else diameter)
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{what}: radius/diameter must be finite and > 0, got {value}")
    if radius is not None:
        return value, value * ratio
    return value / ratio, value


class Constraint(ABC):
    """A norm ball `{x : ‖x‖_C ≤ radius}` over one parameter group (see module docstring)."""

    name: ClassVar[str] = "constraint"
    bounded: ClassVar[bool] = True

    def __init__(self, radius: float | None, diameter: float | None, ratio: float) -> None:
        self._radius, self._diameter = _radius_diameter(radius, diameter, ratio, self.name)

    @property
    def radius(self) -> float:
        """Radius in the constraint's own norm."""
        return self._radius

    @property
    def diameter(self) -> float:
        """L2 diameter of the set (what the 'diameter' and 'fast_gradient' rescales use)."""
        return self._diameter

    def lmo(self, g: Tensors, state: dict[str, Any] | None = None) -> Tensors:
        """`argmin_{v ∈ C} ⟨g, v⟩`, same shapes as `g`. `state` is a per-group dict an LMO may use
        for warm starts (SFW passes its optimizer state so it is checkpointed)."""
        gs, single = as_list(g)
        with torch.no_grad():
            vs = self._lmo([t.detach() for t in gs], state)
        return vs[0] if single else vs

    def norm(self, x: Tensors) -> float:
        """The gauge `‖x‖_C` (x is feasible iff it is ≤ radius)."""
        xs, _ = as_list(x)
        with torch.no_grad():
            return float(self._norm([t.detach() for t in xs]))

    def is_feasible(self, x: Tensors, tol: float = 1e-5) -> bool:
        """`‖x‖_C ≤ radius · (1 + tol)` (relative tolerance)."""
        return self.norm(x) <= self.radius * (1.0 + tol)

    def shift_to_feasible(self, x: Tensors) -> Tensors:
        """`x` rescaled into the ball by `radius / ‖x‖_C` if outside, else `x` unchanged."""
        xs, single = as_list(x)
        n = self.norm(xs)
        if n > self.radius:
            xs = [t.detach() * (self.radius / n) for t in xs]
        return xs[0] if single else xs

    def spec(self) -> dict[str, Any]:
        """JSON-able description (stored in SFW's state_dict instead of the object)."""
        return {"name": self.name, "radius": self.radius, "diameter": self.diameter}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}"
                         for k, v in self.spec().items() if k != "name")
        return f"{type(self).__name__}({args})"

    @abstractmethod
    def _lmo(self, gs: list[torch.Tensor], state: dict[str, Any] | None) -> list[torch.Tensor]:
        """LMO on a list of detached tensors."""

    @abstractmethod
    def _norm(self, xs: list[torch.Tensor]) -> float:
        """Gauge norm of a list of detached tensors."""


class Unconstrained(Constraint):
    """No constraint. It has no LMO (the set is unbounded): SFW gives a group with this
    constraint a plain momentum-SGD step `θ ← θ − lr · buf` (no rescaling, no clamping)."""

    name = "unconstrained"
    bounded = False

    def __init__(self) -> None:
        self._radius, self._diameter = math.inf, math.inf

    def _lmo(self, gs: list[torch.Tensor], state: dict[str, Any] | None) -> list[torch.Tensor]:
        raise ConfigError(
            "Unconstrained has no linear minimization oracle (the set is unbounded); SFW takes an "
            "SGD step on such groups, other callers must pick a bounded constraint (e.g. 'l2')"
        )

    def _norm(self, xs: list[torch.Tensor]) -> float:
        return 0.0

    def spec(self) -> dict[str, Any]:
        return {"name": self.name}


class L2Ball(Constraint):
    """`‖x‖₂ ≤ r`; LMO `v = −r · g / ‖g‖₂`; D = 2r."""

    name = "l2"

    def __init__(self, radius: float | None = None, diameter: float | None = None) -> None:
        super().__init__(radius, diameter, 2.0)

    def _lmo(self, gs: list[torch.Tensor], state: dict[str, Any] | None) -> list[torch.Tensor]:
        g = flat(gs)
        return split_like(-self.radius * safe_div(g, torch.linalg.vector_norm(g)), gs)

    def _norm(self, xs: list[torch.Tensor]) -> float:
        return float(torch.linalg.vector_norm(flat(xs).to(torch.float64)))


class L1Ball(Constraint):
    """`‖x‖₁ ≤ r`; LMO `v = −r · sign(g_i) e_i` at `i = argmax |g_i|`; D = 2r."""

    name = "l1"

    def __init__(self, radius: float | None = None, diameter: float | None = None) -> None:
        super().__init__(radius, diameter, 2.0)

    def _lmo(self, gs: list[torch.Tensor], state: dict[str, Any] | None) -> list[torch.Tensor]:
        g = flat(gs)
        i = torch.argmax(g.abs()).reshape(1)
        v = torch.zeros_like(g).scatter_(0, i, -self.radius * torch.sign(g[i]))
        return split_like(v, gs)

    def _norm(self, xs: list[torch.Tensor]) -> float:
        return float(flat(xs).to(torch.float64).abs().sum())


class LInfBall(Constraint):
    """`‖x‖∞ ≤ r` over `n` entries; LMO `v = −r · sign(g)`; D = 2r√n."""

    name = "linf"

    def __init__(self, n: int, radius: float | None = None, diameter: float | None = None) -> None:
        if n < 1:
            raise ConfigError(f"linf: the group needs n >= 1 entries, got {n}")
        self.n = int(n)
        super().__init__(radius, diameter, 2.0 * math.sqrt(self.n))

    def _lmo(self, gs: list[torch.Tensor], state: dict[str, Any] | None) -> list[torch.Tensor]:
        return [-self.radius * torch.sign(g) for g in gs]

    def _norm(self, xs: list[torch.Tensor]) -> float:
        return float(flat(xs).abs().max())

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "n": self.n}


class KSparsePolytope(Constraint):
    """Convex hull of the vectors with K entries `±r` and zeros elsewhere
    (`= B₁(K·r) ∩ B∞(r)`, gauge `max(‖x‖∞, ‖x‖₁/K)`); LMO `v = −r · sign(g)` on the top-K `|g|`;
    D = 2r√K, i.e. `r = D / (2√K)`."""

    name = "k-sparse"

    def __init__(
        self, n: int, k: int | float, radius: float | None = None, diameter: float | None = None
    ) -> None:
        self.n = int(n)
        self.k = resolve_k(k, self.n, self.name)
        super().__init__(radius, diameter, 2.0 * math.sqrt(self.k))

    def _lmo(self, gs: list[torch.Tensor], state: dict[str, Any] | None) -> list[torch.Tensor]:
        g = flat(gs)
        k = min(self.k, g.numel())
        idx = torch.topk(g.abs(), k).indices
        v = torch.zeros_like(g).scatter_(0, idx, -self.radius * torch.sign(g[idx]))
        return split_like(v, gs)

    def _norm(self, xs: list[torch.Tensor]) -> float:
        x = flat(xs).to(torch.float64).abs()
        return max(float(x.max()), float(x.sum()) / self.k)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "n": self.n, "k": self.k}


class KSupportBall(Constraint):
    """K-support norm ball (convex hull of K-sparse vectors with `‖v‖₂ ≤ r`);
    LMO `v = −r · g_K / ‖g_K‖₂` with `g_K` the top-K entries of `|g|`; D = 2r."""

    name = "k-support"

    def __init__(
        self, n: int, k: int | float, radius: float | None = None, diameter: float | None = None
    ) -> None:
        self.n = int(n)
        self.k = resolve_k(k, self.n, self.name)
        super().__init__(radius, diameter, 2.0)

    def _lmo(self, gs: list[torch.Tensor], state: dict[str, Any] | None) -> list[torch.Tensor]:
        g = flat(gs)
        k = min(self.k, g.numel())
        idx = torch.topk(g.abs(), k).indices
        gk = g[idx]
        v = torch.zeros_like(g).scatter_(
            0, idx, -self.radius * safe_div(gk, torch.linalg.vector_norm(gk))
        )
        return split_like(v, gs)

    def _norm(self, xs: list[torch.Tensor]) -> float:
        return k_support_norm(flat(xs), self.k)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "n": self.n, "k": self.k}


class GroupKSupportBall(Constraint):
    """Group-K-support ball over output filters (slices along dim 0 of every tensor of the
    group, e.g. Conv2d weights `(n, c, kh, kw)`): gauge = K-support norm of the filter norms.
    LMO keeps the K filters with the largest `‖G[i]‖₂`: `v = −r · G_sel / ‖G_sel‖₂`; D = 2r.
    `n_groups` is the total filter count of the group (per layer or global)."""

    name = "group-k-support"

    def __init__(
        self, n_groups: int, k: int | float, radius: float | None = None,
        diameter: float | None = None,
    ) -> None:
        self.n_groups = int(n_groups)
        self.k = resolve_k(k, self.n_groups, self.name)
        super().__init__(radius, diameter, 2.0)

    @staticmethod
    def _filter_norms(xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1) for t in xs])

    def _lmo(self, gs: list[torch.Tensor], state: dict[str, Any] | None) -> list[torch.Tensor]:
        norms = self._filter_norms(gs)
        k = min(self.k, norms.numel())
        idx = torch.topk(norms, k).indices
        mask = torch.zeros_like(norms).index_fill_(0, idx, 1.0)
        scale = -self.radius * safe_div(mask, torch.linalg.vector_norm(norms[idx]))
        out, start = [], 0
        for g in gs:
            s = scale[start:start + g.shape[0]].view(-1, *([1] * (g.dim() - 1)))
            out.append(g * s)
            start += g.shape[0]
        return out

    def _norm(self, xs: list[torch.Tensor]) -> float:
        return k_support_norm(self._filter_norms(xs), self.k)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "n_groups": self.n_groups, "k": self.k}
