"""Stochastic Frank-Wolfe (SFW) with one constraint per parameter group.

Step for every group (ZIB-IOL compression-aware-SFW `optimizers/optimizers.py`, code):
1. `g` = momentum buffer: heavy ball `buf = μ·buf + grad` (compression-aware-SFW) or EMA
   `buf = μ·buf + (1−μ)·grad` (ZIB-IOL StochasticFrankWolfe); both start at `buf = grad`.
2. `v = constraint.lmo(g)`.
3. `η = clamp(factor · lr, 0, 1)` with factor `1/D` ("diameter"), `‖g‖/‖θ − v‖` ("gradient"),
   `‖g‖/(D/2)` ("fast_gradient") or 1 (None); norms over the whole group.
4. `θ ← (1 − η)·θ + η·v`. No weight decay.

Parameters of a group without a gradient this step count as a zero gradient when another
parameter of the group has one (they still shrink towards `v`, keeping the group feasible); a
group where none has a gradient is skipped. A group whose constraint is `Unconstrained` gets a
plain momentum-SGD step `θ ← θ − lr·g` instead (no LMO exists for an unbounded set).
`η` is kept as a tensor, so a step does not synchronize with the GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from rankwise.errors import CheckpointError, ConfigError
from rankwise.optim.constraints_vector import Constraint

RESCALES = ("gradient", "diameter", "fast_gradient", None)
MOMENTUM_STYLES = ("heavy_ball", "ema")


class SFW(torch.optim.Optimizer):
    """Stochastic Frank-Wolfe; every param group needs a `constraint` (or pass a default).

    `lr`, `momentum`, `momentum_style` and `rescale` are group defaults (overridable per group);
    LR schedulers act on `group["lr"]` as usual. `last_eta` holds each group's step size of the
    last step (tensor or float; NaN for skipped groups) for logging.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        momentum: float = 0.9,
        momentum_style: str = "heavy_ball",
        rescale: str | None = "gradient",
        constraint: Constraint | None = None,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, momentum_style=momentum_style,
                        rescale=rescale, constraint=constraint)
        self.last_eta: list[torch.Tensor | float] = []
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        where = f"SFW param group {group.get('name', len(self.param_groups) - 1)}"
        if group["rescale"] == "None":
            group["rescale"] = None
        if not isinstance(group["constraint"], Constraint):
            raise ConfigError(
                f"{where}: needs a Constraint under 'constraint' (got {group['constraint']!r}); "
                "build groups with rankwise.optim.make_param_groups or pass constraint="
            )
        if group["rescale"] not in RESCALES:
            raise ConfigError(
                f"{where}: rescale must be one of {RESCALES}, got {group['rescale']!r}"
            )
        if group["momentum_style"] not in MOMENTUM_STYLES:
            raise ConfigError(
                f"{where}: momentum_style must be one of {MOMENTUM_STYLES}, "
                f"got {group['momentum_style']!r}"
            )
        if not 0.0 <= float(group["momentum"]) < 1.0:
            raise ConfigError(f"{where}: momentum must be in [0, 1), got {group['momentum']}")
        if not float(group["lr"]) >= 0.0:
            raise ConfigError(f"{where}: lr must be >= 0, got {group['lr']}")

    @torch.no_grad()
    def reset_momentum(self, clear_lmo_cache: bool = False) -> None:
        """Drop the momentum buffers (do this after pruning); optionally the LMO warm starts."""
        for state in self.state.values():
            state.pop("momentum_buffer", None)
            if clear_lmo_cache:
                state.pop("lmo_basis", None)

    def _directions(self, group: dict[str, Any]) -> list[torch.Tensor]:
        mu, ema = float(group["momentum"]), group["momentum_style"] == "ema"
        out = []
        for p in group["params"]:
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            if grad.is_sparse:
                raise ConfigError("SFW does not support sparse gradients")
            if mu == 0.0:
                out.append(grad)
                continue
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            elif ema:
                buf.mul_(mu).add_(grad, alpha=1.0 - mu)
            else:
                buf.mul_(mu).add_(grad)
            out.append(buf)
        return out

    @staticmethod
    def step_size(
        rescale: str | None, lr: float, constraint: Constraint, params: list[torch.Tensor],
        grads: list[torch.Tensor], vs: list[torch.Tensor],
    ) -> torch.Tensor | float:
        """`η = clamp(factor · lr, 0, 1)` for one group (see module docstring)."""
        if rescale is None:
            return min(max(lr, 0.0), 1.0)
        if rescale == "diameter":
            return min(max(lr / constraint.diameter, 0.0), 1.0)
        gnorm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if rescale == "fast_gradient":
            denom = torch.full_like(gnorm, 0.5 * constraint.diameter)
        else:
            dists = [torch.linalg.vector_norm(p - v) for p, v in zip(params, vs, strict=True)]
            denom = torch.linalg.vector_norm(torch.stack(dists))
        # ‖θ − v‖ = 0 means θ = v already: any η leaves θ unchanged.
        factor = gnorm / denom.clamp_min(torch.finfo(denom.dtype).tiny)
        return (factor * lr).clamp(0.0, 1.0)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One SFW step on every group; returns the closure's loss if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.last_eta = []
        for group in self.param_groups:
            params: list[torch.Tensor] = list(group["params"])
            if not any(p.grad is not None for p in params):
                self.last_eta.append(float("nan"))
                continue
            constraint: Constraint = group["constraint"]
            grads = self._directions(group)
            if not constraint.bounded:
                for p, g in zip(params, grads, strict=True):
                    p.add_(g, alpha=-float(group["lr"]))
                self.last_eta.append(float(group["lr"]))
                continue
            vs = constraint.lmo(grads, state=self.state[params[0]])
            lr = float(group["lr"])
            eta = self.step_size(group["rescale"], lr, constraint, params, grads, vs)
            for p, v in zip(params, vs, strict=True):
                p.mul_(1.0 - eta).add_(v * eta)
            self.last_eta.append(eta)
        return loss

    def state_dict(self) -> dict[str, Any]:
        """Like `torch.optim.Optimizer.state_dict`, with each constraint replaced by its `spec()`
        (plain dict), so checkpoints hold tensors and builtins only."""
        sd = super().state_dict()
        for g in sd["param_groups"]:
            c = g.get("constraint")
            if isinstance(c, Constraint):
                g["constraint"] = c.spec()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load buffers and hyper-parameters; keeps this optimizer's constraint objects.

        Raises `CheckpointError` when a saved group's constraint type differs from this one's.
        """
        constraints = [g["constraint"] for g in self.param_groups]
        saved = state_dict.get("param_groups", [])
        for i, (c, sg) in enumerate(zip(constraints, saved, strict=False)):
            spec = sg.get("constraint")
            if isinstance(spec, dict) and spec.get("name") != c.name:
                raise CheckpointError(
                    f"SFW state: param group {sg.get('name', i)} was saved with constraint "
                    f"{spec.get('name')!r} but this optimizer uses {c.name!r}; build the same "
                    "param groups (make_param_groups with the same constraint) before loading"
                )
        super().load_state_dict(state_dict)
        for g, c in zip(self.param_groups, constraints, strict=True):
            g["constraint"] = c
