"""Proximal SGD with singular-value soft-thresholding (SVT): the nuclear-norm prox baseline of
ZIB-IOL compression-aware-SFW (`Prox_SGD`, code: an SGD step, then the prox operator applied to
every parameter with the group's learning rate; no weight decay).

For `R(W) = λ · ‖W.flatten(1)‖_*` the prox with step `lr` is the SVT of Cai, Candès, Shen (2010):

    prox_{lr·R}(W) = argmin_X ½‖X − W‖_F² + lr·λ·‖X‖_*  =  U · diag(max(σ − lr·λ, 0)) · Vᵀ

with `W.flatten(1) = U diag(σ) Vᵀ`. So every step zeroes the singular values below `lr·λ`: the
weights become exactly low-rank during training (unlike the penalty's sub-gradient `λ·U Vᵀ`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from rankwise.errors import ConfigError
from rankwise.linalg.svd import thin_svd


def svt_with_rank(m: torch.Tensor, tau: float) -> tuple[torch.Tensor, int]:
    """`(svt(m, tau), number of singular values above tau)`."""
    if m.dim() != 2:
        raise ConfigError(f"svt needs a matrix (p, q), got shape {tuple(m.shape)}")
    if not tau >= 0:
        raise ConfigError(f"svt: the threshold must be >= 0, got {tau}")
    a = m.detach().to(torch.float64 if m.dtype == torch.float64 else torch.float32)
    u, s, vh = thin_svd(a)
    kept = (s - tau).clamp_min(0)
    return ((u * kept) @ vh).to(m.dtype), int((kept > 0).sum())


def svt(m: torch.Tensor, tau: float) -> torch.Tensor:
    """Singular-value soft-thresholding of `m (p, q)`: `U diag(max(σ − tau, 0)) Vᵀ`, same dtype
    (computed in float64 for float64 input, float32 otherwise). `tau >= 0`."""
    return svt_with_rank(m, tau)[0]


def prox_nuclear(w: torch.Tensor, tau: float) -> torch.Tensor:
    """Prox of `tau · ‖W.flatten(1)‖_*` for a weight `w (n, ...)` (>= 2 dims), shape kept."""
    if w.dim() < 2:
        raise ConfigError(f"prox_nuclear needs a weight with >= 2 dims, got {tuple(w.shape)}")
    return svt(w.flatten(1), tau).view(w.shape)


class ProxSGD(torch.optim.Optimizer):
    """SGD (heavy-ball momentum, optional Nesterov and L2 weight decay) followed by SVT.

    Per step and group: `d = grad + wd·θ`; with momentum `b ← μ·b + d` (first `b = d`) and
    `d = b` (Nesterov: `d + μ·b`); `θ ← θ − lr·d`; then, for every tensor with >= 2 dims when
    the group's `prox_weight` λ > 0, `θ ← prox_nuclear(θ, lr·λ)`. 1-D tensors (biases, BN) only
    get the SGD step. The reference passes no weight decay (`weight_decay=0`, the default).
    `last_ranks` holds, after each step, the rank kept per thresholded tensor (in group order).
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0,
                 prox_weight: float = 0.0) -> None:
        checks = [(lr >= 0, f"lr must be >= 0, got {lr}"),
                  (0.0 <= momentum < 1.0, f"momentum must be in [0, 1), got {momentum}"),
                  (not nesterov or momentum > 0, "nesterov needs momentum > 0"),
                  (weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}"),
                  (prox_weight >= 0, f"prox_weight must be >= 0, got {prox_weight}")]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"ProxSGD: {msg}")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                      weight_decay=weight_decay, prox_weight=prox_weight))
        self.last_ranks: list[int] = []

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One proximal step on every group; returns the closure's loss if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.last_ranks = []
        for group in self.param_groups:
            lr, mu, wd = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
            lam = float(group["prox_weight"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.detach()
                if wd:
                    d = d.add(p, alpha=wd)
                if mu:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d.clone()
                    else:
                        buf.mul_(mu).add_(d)
                    d = d.add(buf, alpha=mu) if group["nesterov"] else buf
                p.add_(d, alpha=-lr)
                if lam > 0 and p.dim() >= 2:
                    new, rank = svt_with_rank(p.flatten(1), lr * lam)
                    p.copy_(new.view(p.shape))
                    self.last_ranks.append(rank)
        return loss


def prox_param_groups(model: nn.Module, prox_weight: float, *,
                      include_linear: bool = False) -> list[dict[str, Any]]:
    """Two groups for `ProxSGD`: Conv2d weights (and Linear weights if `include_linear`) with
    `prox_weight` λ, every other trainable parameter with λ = 0 (plain SGD)."""
    targets: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear) if include_linear \
        else (nn.Conv2d,)
    prox, rest, seen = [], [], set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (prox if pname == "weight" and isinstance(module, targets) else rest).append(p)
    groups = [{"params": prox, "prox_weight": float(prox_weight)}]
    if rest:
        groups.append({"params": rest, "prox_weight": 0.0})
    return groups


__all__ = ["ProxSGD", "prox_nuclear", "prox_param_groups", "svt", "svt_with_rank"]
