"""The general Lp ball `{x : ‖x‖_p ≤ r}` for any p ≥ 1 (p = ∞ included), as an SFW constraint.

LMO (Hölder equality case): with `q = p / (p − 1)` the dual exponent,

    v = −r · sign(g) · |g|^(q−1) / ‖g‖_q^(q−1),     ⟨g, v⟩ = −r · ‖g‖_q,

and the limits p = 1 (`q = ∞`: `−r · sign(g_i) e_i` at `i = argmax |g_i|`) and p = ∞ (`q = 1`:
`−r · sign(g)`). p = 1, 2, ∞ are computed exactly as `L1Ball`, `L2Ball`, `LInfBall` compute them.
`|g|^(q−1)` is evaluated on `g / max|g|` in float64, so large q (p near 1) neither overflows nor
divides by zero; ties of the p = 1 vertex go to the first maximal entry. A zero gradient gives
the zero vector.

L2 diameter of the ball over `n` entries: `D = 2r · n^max(0, 1/2 − 1/p)` (the largest `‖x‖₂`
with `‖x‖_p ≤ r` is r for p ≤ 2 and `r · n^(1/2 − 1/p)` for p ≥ 2, attained at `r · e_i` resp.
at `r · n^(−1/p) · 1`): 2r for L1 and L2, `2r√n` for L∞, as in the reference code's balls.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rankwise.errors import ConfigError
from rankwise.optim.constraints_vector import Constraint, flat, split_like


def lp_diameter_ratio(p: float, n: int) -> float:
    """`D / r` of the Lp ball over `n` entries: `2 · n^max(0, 1/2 − 1/p)`."""
    inv_p = 0.0 if math.isinf(p) else 1.0 / p
    return 2.0 * float(n) ** max(0.0, 0.5 - inv_p)


def lp_norm(x: torch.Tensor, p: float) -> float:
    """`‖x‖_p` of a vector in float64, scaled by `max|x|` first (no overflow for large p)."""
    a = x.detach().reshape(-1).to(torch.float64).abs()
    if a.numel() == 0:
        return 0.0
    m = float(a.max())
    if m == 0.0:
        return 0.0
    if math.isinf(p):
        return m
    return m * float(((a / m) ** p).sum() ** (1.0 / p))


class LpBall(Constraint):
    """`‖x‖_p ≤ r` over the `n` entries of a parameter group, any `p ≥ 1` (float or `math.inf`);
    LMO in the module docstring; `D = 2r · n^max(0, 1/2 − 1/p)`."""

    name = "lp"

    def __init__(
        self, n: int, p: float, radius: float | None = None, diameter: float | None = None
    ) -> None:
        p = float(p)
        if not p >= 1.0:  # also rejects NaN
            raise ConfigError(f"lp: the exponent p must be >= 1 (or inf), got {p}; for p < 1 "
                              "the set is not convex")
        if n < 1:
            raise ConfigError(f"lp: the group needs n >= 1 entries, got {n}")
        self.n, self.p = int(n), p
        super().__init__(radius, diameter, lp_diameter_ratio(p, self.n))

    @property
    def q(self) -> float:
        """The dual exponent `p / (p − 1)` (∞ for p = 1, 1 for p = ∞)."""
        if self.p == 1.0:
            return math.inf
        if math.isinf(self.p):
            return 1.0
        return self.p / (self.p - 1.0)

    def _direction(self, g: torch.Tensor) -> torch.Tensor:
        """Unit-`‖·‖_p` minimizer of `⟨g, v⟩` (float64, same shape as the flat `g`)."""
        g64 = g.to(torch.float64)
        a = g64.abs()
        m = a.max() if a.numel() else a.new_zeros(())
        if float(m) == 0.0:
            return torch.zeros_like(g64)
        if self.p == 1.0:
            i = torch.argmax(a).reshape(1)
            return torch.zeros_like(g64).scatter_(0, i, -torch.sign(g64[i]))
        if math.isinf(self.p):
            return -torch.sign(g64)
        if self.p == 2.0:
            return -g64 / torch.linalg.vector_norm(g64)
        w = (a / m) ** (self.q - 1.0)  # entries in [0, 1], the largest is exactly 1
        w = w / torch.linalg.vector_norm(w, ord=self.p)
        return -torch.sign(g64) * w

    def _lmo(self, gs: list[torch.Tensor], state: dict[str, Any] | None) -> list[torch.Tensor]:
        g = flat(gs)
        v = (self.radius * self._direction(g)).to(g.dtype)
        return split_like(v, gs)

    def _norm(self, xs: list[torch.Tensor]) -> float:
        return lp_norm(flat(xs), self.p)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "n": self.n, "p": self.p}


__all__ = ["LpBall", "lp_diameter_ratio", "lp_norm"]
