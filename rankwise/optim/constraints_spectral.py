"""Spectral constraint sets on one weight `W` seen as the matrix `W.flatten(1) (n, c·kh·kw)`.

Gauges are functions of the singular values σ of that matrix (computed in float64 for
`norm`/`is_feasible`); LMOs need only the top singular triplets of `−G`, from
`rankwise.linalg.topk_svd` (block power iteration with QR, warm-started from the previous
step's right basis kept in the optimizer state under `"lmo_basis"`, or an exact/randomized SVD).

| name               | gauge                     | LMO                               | D       |
|--------------------|---------------------------|-----------------------------------|---------|
| nuclear            | Σσ                        | r · u₁v₁ᵀ                         | 2r      |
| spectral-k-sparse  | max(σ₁, Σσ / K)           | r · U_K V_Kᵀ                      | 2r√K    |
| spectral-k-support | K-support norm of σ       | r / ‖S_K‖₂ · U_K diag(S_K) V_Kᵀ   | 2r      |

(U, S, V the top singular triplets of `−G`; conventions of ZIB-IOL compression-aware-SFW, code.)
The reference uses 20 power steps for the nuclear LMO and 10 block steps for the K-pair ones,
from random starts; warm starts are a rankwise addition (`warm_start=False` restores the former).

Default `method="auto"` (our choice, measured on one CPU thread): the **exact** top-K from a
thin SVD on the tall side (`rankwise.linalg.svd.thin_svd`) wherever it is not slower than the
power iteration, the power iteration elsewhere. For K pairs (K = 0.3 of the rank) the exact SVD
was faster at every size we timed (ResNet-20's 19 convs: 2.3× faster than 10 warm-started block
steps; 512×4608: 1.5 s vs 3.3 s), and 10 power steps from a cold start leave the vertex up to
3 % short in `⟨G, v⟩` and 2–59 % away from the exact vertex as a tensor (warm-started: ≤ 0.04 %,
≤ 18 %; `python -m rankwise.bench.sfw_cost`). For the top pair alone (nuclear) 20 power steps
are cheaper from 128 rows up (256×2304: 26 ms vs 122 ms) and on par at 64×576, so "auto" takes
the exact SVD when `min(p, q) <= AUTO_EXACT_MAX_SIDE` (64) and the power iteration
above it. `method="power"` / `"exact"` / `"lowrank"` force one path.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rankwise.errors import ConfigError
from rankwise.linalg.svd import thin_svd
from rankwise.linalg.topk_svd import TopKSVD, topk_svd
from rankwise.optim.constraints_vector import Constraint, k_support_norm, resolve_k, safe_div

LMO_METHODS = ("auto", "exact", "power", "lowrank")
AUTO_EXACT_MAX_SIDE = 64
"""`method="auto"` on the top pair alone (nuclear): exact SVD up to this shorter side."""


def exact_triplets(m: torch.Tensor, k: int) -> TopKSVD:
    """Top-`k` triplets of `m (p, q)` from the thin SVD on the tall side (exact; float64 for
    float64 input, float32 otherwise). The wide-side LAPACK call is 2–3× slower."""
    a = m.detach().to(torch.float64 if m.dtype == torch.float64 else torch.float32)
    u, s, vh = thin_svd(a)
    return TopKSVD(u[:, :k], s[:k], vh[:k, :])


class SpectralConstraint(Constraint):
    """Base of the spectral sets: one tensor `(n, ...)` per group, matricized as `flatten(1)`."""

    def __init__(
        self, max_rank: int, k: int | float, ratio_of_k: bool, radius: float | None,
        diameter: float | None, method: str, steps: int, warm_start: bool, seed: int,
    ) -> None:
        if method not in LMO_METHODS:
            raise ConfigError(f"{self.name}: method must be one of {LMO_METHODS}, got {method!r}")
        if steps < 1:
            raise ConfigError(f"{self.name}: steps must be >= 1, got {steps}")
        self.max_rank = int(max_rank)
        self.k = resolve_k(k, self.max_rank, self.name)
        self.method, self.steps = method, int(steps)
        self.warm_start, self.seed = bool(warm_start), int(seed)
        ratio = 2.0 * math.sqrt(self.k) if ratio_of_k else 2.0
        super().__init__(radius, diameter, ratio)

    def _matrix(self, xs: list[torch.Tensor]) -> torch.Tensor:
        if len(xs) != 1 or xs[0].dim() < 2:
            shapes = [tuple(t.shape) for t in xs]
            raise ConfigError(
                f"{self.name}: a spectral constraint needs exactly one weight with >= 2 dims per "
                f"param group, got shapes {shapes}; make one group per Conv2d/Linear weight"
            )
        return xs[0].flatten(1)

    def resolved_method(self, shape: tuple[int, ...]) -> str:
        """The top-K path used for a matrix of `shape (p, q)` (see the module docstring)."""
        if self.method != "auto":
            return self.method
        if self.k == 1 and min(shape) > AUTO_EXACT_MAX_SIDE:
            return "power"
        return "exact"

    def _triplets(self, neg_g: torch.Tensor, state: dict[str, Any] | None) -> TopKSVD:
        """Top-K triplets of `neg_g (p, q)`, warm-started from / saved to `state`."""
        k = min(self.k, min(neg_g.shape))
        method = self.resolved_method(tuple(neg_g.shape))
        if method == "exact":
            return exact_triplets(neg_g, k)
        v0 = None
        if self.warm_start and state is not None:
            v0 = state.get("lmo_basis")
        out = topk_svd(neg_g, k, method, steps=self.steps, v0=v0, seed=self.seed)
        if self.warm_start and state is not None and method == "power":
            state["lmo_basis"] = out.Vh.mT.contiguous()
        return out

    def _sigma(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.linalg.svdvals(self._matrix(xs).to(torch.float64))

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "max_rank": self.max_rank, "k": self.k, "method": self.method,
                "steps": self.steps}


class NuclearBall(SpectralConstraint):
    """Nuclear-norm ball `Σσ(W.flatten(1)) ≤ r`; LMO `r · u vᵀ` from the top pair of `−G`."""

    name = "nuclear"

    def __init__(
        self, radius: float | None = None, diameter: float | None = None, *,
        method: str = "auto", steps: int = 20, warm_start: bool = True, seed: int = 0,
    ) -> None:
        super().__init__(1, 1, False, radius, diameter, method, steps, warm_start, seed)

    def _lmo(self, gs: list[torch.Tensor], state: dict[str, Any] | None) -> list[torch.Tensor]:
        g = gs[0]
        u, s, vh = self._triplets(-self._matrix(gs), state)
        nonzero = (s[:1] > 0).to(u.dtype)  # zero gradient -> zero vertex (keeps pruned zeros)
        v = (self.radius * nonzero) * (u[:, :1] @ vh[:1, :])
        return [v.to(g.dtype).view(g.shape)]

    def _norm(self, xs: list[torch.Tensor]) -> float:
        return float(self._sigma(xs).sum())

    def spec(self) -> dict[str, Any]:
        out = super().spec()
        out.pop("max_rank")
        out.pop("k")
        return out


class SpectralKSparsePolytope(SpectralConstraint):
    """Convex hull of `r · U_K V_Kᵀ` (K orthonormal pairs): gauge `max(σ₁, Σσ/K)`;
    LMO `r · U_K V_Kᵀ` from the top-K triplets of `−G`; `r = D / (2√K)`."""

    name = "spectral-k-sparse"

    def __init__(
        self, max_rank: int, k: int | float, radius: float | None = None,
        diameter: float | None = None, *, method: str = "auto", steps: int = 10,
        warm_start: bool = True, seed: int = 0,
    ) -> None:
        super().__init__(max_rank, k, True, radius, diameter, method, steps, warm_start, seed)

    def _lmo(self, gs: list[torch.Tensor], state: dict[str, Any] | None) -> list[torch.Tensor]:
        g = gs[0]
        u, _, vh = self._triplets(-self._matrix(gs), state)
        return [(self.radius * (u @ vh)).to(g.dtype).view(g.shape)]

    def _norm(self, xs: list[torch.Tensor]) -> float:
        s = self._sigma(xs)
        return max(float(s.max()), float(s.sum()) / self.k)


class SpectralKSupportBall(SpectralConstraint):
    """Spectral K-support ball (gauge: K-support norm of σ); LMO
    `r / ‖S_K‖₂ · U_K diag(S_K) V_Kᵀ` from the top-K triplets of `−G`; `r = D / 2`."""

    name = "spectral-k-support"

    def __init__(
        self, max_rank: int, k: int | float, radius: float | None = None,
        diameter: float | None = None, *, method: str = "auto", steps: int = 10,
        warm_start: bool = True, seed: int = 0,
    ) -> None:
        super().__init__(max_rank, k, False, radius, diameter, method, steps, warm_start, seed)

    def _lmo(self, gs: list[torch.Tensor], state: dict[str, Any] | None) -> list[torch.Tensor]:
        g = gs[0]
        u, s, vh = self._triplets(-self._matrix(gs), state)
        w = self.radius * safe_div(s, torch.linalg.vector_norm(s))
        return [((u * w) @ vh).to(g.dtype).view(g.shape)]

    def _norm(self, xs: list[torch.Tensor]) -> float:
        return k_support_norm(self._sigma(xs), self.k)
