"""Optimizers that move the parameters only inside `θ₀ + rowspace(P)` (DLDR subspace training).

`P` (d, D) has orthonormal rows; `D` is the number of entries of all parameters, flattened in
param-group order (group 0's tensors first, each `reshape(-1)`), the order the basis was built
in. Both optimizers read `∇θ` from `.grad` (a missing grad counts as zero), work on the `d`
coordinates `g = P ∇θ`, and write `θ ← θ + Pᵀ Δz`, so `θ − θ₀` stays in the row space of `P`.
Per nblt/DLDR (`train_psgd.py`, `train_pbfgs.py`), code:

- `ProjectedSGD`: `b ← μ b + g` (first step `b = g`), `z ← z − lr·b`, `θ ← θ − lr·Pᵀ b`
  (the code puts `PᵀP∇θ` into `.grad` and calls `SGD(lr=1, momentum=0.9)`: the same thing).
- `ProjectedBFGS`: `H` (d × d) approximates the inverse Hessian, `H₀ = I`. With `y = g − g_prev`,
  `s` the previous step: if `yᵀs > ε`, `V = I − ρ y sᵀ`, `H ← Vᵀ H V + ρ s sᵀ` (`ρ = 1/yᵀs`).
  Direction `p = −H g`; Armijo backtracking from `α = lr`: accept the first `α` with
  `f(θ + α Pᵀp) < f(θ) + c₁ α gᵀp`, else `α ← ρ_ls α`, at most `max_trials` trials (code:
  `ρ_ls = 0.4`, `c₁ = 0.4`, 20 trials); when none is accepted the last, tiny `α` is taken as
  the code does. `line_search="interpolate"` (ours) also tries the minimiser of the quadratic
  through `f(θ)`, the slope and `f(θ + α Pᵀp)`: exact on quadratics, so BFGS terminates in ≤ d
  steps there. No weight decay in either (code); `weight_decay` adds `wd·θ` to `∇θ` (and
  `½ wd ‖θ‖²` to `f` for P-BFGS's line search).

The optimizers' own state (coordinates `z`, momentum, `H`, …) lives in `state["subspace"]`, so
`state_dict()` / `load_state_dict()` round-trip it (as copies: torch passes a non-parameter
state entry through by reference); `P` itself is a constructor argument.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from rankwise.errors import ConfigError

LINE_SEARCHES = ("backtrack", "interpolate")
_KEY = "subspace"


def flat_params(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """All `params` flattened and concatenated, (D,), detached (a copy)."""
    return torch.cat([p.detach().reshape(-1) for p in params])


def flat_grads(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Their `.grad`s flattened the same way, (D,); a missing grad gives zeros."""
    return torch.cat([p.grad.detach().reshape(-1) if p.grad is not None
                      else torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
                      for p in params])


@torch.no_grad()
def write_flat_(params: Sequence[torch.Tensor], flat: torch.Tensor, add: bool = False) -> None:
    """Copy (or add, `add=True`) the (D,) vector `flat` into `params`, in order."""
    offset = 0
    for p in params:
        chunk = flat[offset:offset + p.numel()].view_as(p).to(p.dtype)
        p.add_(chunk) if add else p.copy_(chunk)
        offset += p.numel()


def _copy(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in entry.items()}


class _Projected(torch.optim.Optimizer):
    """Shared set-up: the basis, the flattened parameter order, per-group weight decay."""

    def __init__(self, params: Iterable[Any], basis: torch.Tensor,
                 defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        self.params = [p for g in self.param_groups for p in g["params"]]
        dim = sum(p.numel() for p in self.params)
        if basis.ndim != 2 or basis.shape[1] != dim:
            raise ConfigError(
                f"{type(self).__name__}: basis has shape {tuple(basis.shape)} but the parameters "
                f"hold D={dim} numbers; build P (d, D) from the same parameters in the same order")
        first = self.params[0]
        self.basis = basis.detach().to(device=first.device)
        lrs = {float(g["lr"]) for g in self.param_groups}
        if len(lrs) > 1:
            raise ConfigError(f"{type(self).__name__}: all param groups must share one lr (one "
                              f"step in the d coordinates), got {sorted(lrs)}")
        for g in self.param_groups:
            if float(g["weight_decay"]) < 0 or float(g["lr"]) < 0:
                raise ConfigError(f"{type(self).__name__}: lr and weight_decay must be >= 0")

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        if _KEY in out["state"]:
            out["state"] = {**out["state"], _KEY: _copy(out["state"][_KEY])}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if _KEY in self.state:
            own = _copy(self.state[_KEY])
            self.state[_KEY] = {k: v.to(self.basis.device) if isinstance(v, torch.Tensor) else v
                                for k, v in own.items()}

    @property
    def dim(self) -> int:
        """d, the number of trained coordinates."""
        return int(self.basis.shape[0])

    @property
    def sub_state(self) -> dict[str, Any]:
        """The optimizer's own state (see the module docstring), created on first use."""
        st = self.state[_KEY]
        if "coords" not in st:
            st["coords"] = torch.zeros(self.dim, dtype=self.basis.dtype,
                                       device=self.basis.device)
            st["step"] = 0
        return st

    @property
    def coords(self) -> torch.Tensor:
        """z (d,): how far the parameters moved along each basis row since construction."""
        return self.sub_state["coords"]

    def full_gradient(self) -> torch.Tensor:
        """`∇θ + wd·θ` (D,) in the basis dtype."""
        g = flat_grads(self.params).to(self.basis.dtype)
        offset = 0
        for group in self.param_groups:
            n = sum(p.numel() for p in group["params"])
            wd = float(group["weight_decay"])
            if wd:
                g[offset:offset + n] += wd * flat_params(group["params"]).to(g.dtype)
            offset += n
        return g

    def decay_penalty(self) -> float:
        """`Σ_groups ½ wd ‖θ_group‖²`, the weight-decay term of the objective."""
        total = 0.0
        for group in self.param_groups:
            wd = float(group["weight_decay"])
            if wd:
                total += 0.5 * wd * float(sum(p.detach().double().square().sum()
                                              for p in group["params"]))
        return total

    def project(self, full: torch.Tensor) -> torch.Tensor:
        """`P v` (d,) of a (D,) vector."""
        return self.basis @ full.to(self.basis.dtype)

    def lift(self, coords: torch.Tensor) -> torch.Tensor:
        """`Pᵀ z` (D,) of a (d,) vector."""
        return self.basis.T @ coords.to(self.basis.dtype)


class ProjectedSGD(_Projected):
    """P-SGD (DLDR): momentum SGD on the `d` coordinates `z` of `θ = θ₀ + Pᵀ z`.

    `params`: tensors or param groups (all with the same `lr`); `basis`: P (d, D) with
    orthonormal rows. `step()` needs `.grad` from a backward at the current point.
    """

    def __init__(self, params: Iterable[Any], basis: torch.Tensor, lr: float = 1.0,
                 momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"ProjectedSGD: momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0:
            raise ConfigError("ProjectedSGD: nesterov needs momentum > 0")
        super().__init__(params, basis, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                             weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step; `closure` (optional, torch convention) re-evaluates the loss with backward."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        lr, mu = float(group["lr"]), float(group["momentum"])
        st = self.sub_state
        g = self.project(self.full_gradient())
        update = g
        if mu:
            buf = st.get("momentum_buffer")
            buf = g.clone() if buf is None else buf.mul_(mu).add_(g)
            st["momentum_buffer"] = buf
            update = g.add(buf, alpha=mu) if group["nesterov"] else buf
        st["coords"].add_(update, alpha=-lr)
        st["step"] += 1
        write_flat_(self.params, self.lift(update).mul_(-lr), add=True)
        return loss


class ProjectedBFGS(_Projected):
    """P-BFGS (DLDR): BFGS on the `d` coordinates with a backtracking (Armijo) line search.

    `step(closure)`: `.grad` must hold `∇f` at the current point (the trainer's backward);
    `closure()` returns `f` on the *same* mini-batch at the current parameters and is called
    under `torch.no_grad()`: once at the current point and once per line-search trial. It must
    leave no side effects (restore BatchNorm running stats if it runs the model in train mode).
    `set_closure(fn)` stores a default closure for callers that call `step()` bare. `group lr`
    is the first trial step `α₀` (code: 1). Statistics: `state["subspace"]` keys `trials`
    (last step), `total_trials`, `failed_searches`, `skipped_updates` (curvature `yᵀs ≤ ε`).
    """

    def __init__(self, params: Iterable[Any], basis: torch.Tensor, lr: float = 1.0,
                 rho: float = 0.4, c1: float = 0.4, max_trials: int = 20,
                 line_search: str = "backtrack", curvature_eps: float = 1e-20,
                 weight_decay: float = 0.0) -> None:
        checks = [(0 < rho < 1, f"rho must be in (0, 1), got {rho}"),
                  (0 < c1 < 1, f"c1 must be in (0, 1), got {c1}"),
                  (max_trials >= 1, f"max_trials must be >= 1, got {max_trials}"),
                  (line_search in LINE_SEARCHES,
                   f"line_search must be one of {LINE_SEARCHES}, got {line_search!r}")]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"ProjectedBFGS: {msg}")
        super().__init__(params, basis, dict(lr=lr, weight_decay=weight_decay))
        self.rho, self.c1, self.max_trials = float(rho), float(c1), int(max_trials)
        self.line_search, self.curvature_eps = line_search, float(curvature_eps)
        self._closure: Callable[[], Any] | None = None

    def set_closure(self, closure: Callable[[], Any] | None) -> None:
        """The closure `step()` uses when called without one (see the class docstring)."""
        self._closure = closure

    @property
    def inverse_hessian(self) -> torch.Tensor:
        """H (d, d), the current inverse-Hessian approximation."""
        st = self.sub_state
        if "inv_hessian" not in st:
            st["inv_hessian"] = torch.eye(self.dim, dtype=self.basis.dtype,
                                          device=self.basis.device)
            st.update(trials=0, total_trials=0, failed_searches=0, skipped_updates=0)
        return st["inv_hessian"]

    def _update_inverse_hessian(self, g: torch.Tensor) -> None:
        st = self.sub_state
        h = self.inverse_hessian
        if st.get("prev_grad") is None:
            return
        y, s = g - st["prev_grad"], st["prev_step"]
        sy = float(y @ s)
        if sy <= self.curvature_eps:
            st["skipped_updates"] += 1
            return
        r = 1.0 / sy
        v = torch.eye(self.dim, dtype=h.dtype, device=h.device) - r * torch.outer(y, s)
        st["inv_hessian"] = v.T @ h @ v + r * torch.outer(s, s)

    def _evaluate(self, closure: Callable[[], Any]) -> float:
        return float(closure()) + self.decay_penalty()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> float:
        """One P-BFGS step (class docstring); returns `f` at the current point (before the step)."""
        closure = closure if closure is not None else self._closure
        if closure is None:
            raise ConfigError("ProjectedBFGS.step needs a closure that returns the mini-batch "
                              "loss (its line search re-evaluates it); pass one or set_closure()")
        st = self.sub_state
        g = self.project(self.full_gradient())
        self._update_inverse_hessian(g)
        direction = -(self.inverse_hessian @ g)
        slope = float(g @ direction)  # gᵀp < 0 while H is positive definite
        theta0 = flat_params(self.params)
        step_full = self.lift(direction)  # Pᵀ p (D,)
        f0 = self._evaluate(closure)

        def f_at(alpha: float) -> float:
            write_flat_(self.params, theta0 + alpha * step_full.to(theta0.dtype))
            return self._evaluate(closure)

        alpha, trials, ok = self._search(f_at, f0, slope, float(self.param_groups[0]["lr"]))
        write_flat_(self.params, theta0 + alpha * step_full.to(theta0.dtype))
        s = alpha * direction
        st["coords"].add_(s)
        st["prev_grad"], st["prev_step"] = g, s
        st["step"] += 1
        st["trials"], st["total_trials"] = trials, st["total_trials"] + trials
        st["failed_searches"] += 0 if ok else 1
        return f0

    def _search(self, f_at: Callable[[float], float], f0: float, slope: float,
                alpha: float) -> tuple[float, int, bool]:
        """(accepted α, trials used, whether Armijo held) — see the module docstring."""
        def armijo(a: float, f: float) -> bool:
            return f < f0 + self.c1 * a * slope

        trials = 0
        while trials < self.max_trials:
            f = f_at(alpha)
            trials += 1
            if self.line_search == "interpolate" and trials == 1 and trials < self.max_trials:
                curvature = f - f0 - alpha * slope  # quadratic q(a) = f0 + slope a + c a²/α²
                if curvature > 0:
                    best = -slope * alpha * alpha / (2.0 * curvature)
                    f_best = f_at(best)
                    trials += 1
                    if f_best <= f and armijo(best, f_best):
                        return best, trials, True
            if armijo(alpha, f):
                return alpha, trials, True
            alpha *= self.rho
        return alpha, trials, False


__all__ = ["LINE_SEARCHES", "ProjectedBFGS", "ProjectedSGD", "flat_grads", "flat_params",
           "write_flat_"]
