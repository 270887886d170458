"""Soft orthogonality of factorized layers' basis factors (ELRT's performance strategy).

`orthogonality_penalty(model) = Σ_layers Σ_U ‖UᵀU − I‖_F²` over the "basis" factors of every
factorized layer, each written as a matrix `U (p × r)` whose columns should be orthonormal:

- tucker2: `U_in = first.weight[:, :, 0, 0]ᵀ (c_g × r_i)` and `U_out = last.weight[:, :, 0, 0]
  (n_g × r_o)`, per group (the two 1×1 convs; the core G is free);
- channel: `U_out = second.weight (n_g × r)` (the 1×1 conv);
- spatial: `V ((n_g·kw) × r)`, the 1×kw factor matricized as in `SpatialLowRankConv2d`;
- cp: `A = last (n_g × R)`, `B = first (R × c_g)ᵀ`; svd: `U = second.weight (out × r)`;
- tt: the left unfoldings `(r_{k-1}·m_k·n_k) × r_k` of cores 1..d−1.

A matrix with fewer rows than columns cannot have orthonormal columns; it is penalized with the
Gram of the smaller side, `‖UUᵀ − I‖_F²` (orthonormal rows). With this orientation the penalty is
exactly 0 for the orthonormal factors of `rankwise.layers.init.init_factorized_`.
The gradient is `∂/∂U ‖UᵀU − I‖_F² = 4·U·(UᵀU − I)`.
"""

from __future__ import annotations

import torch
from torch import nn

from rankwise.layers.base import FactorizedLayer


def gram_deviation(u: torch.Tensor) -> torch.Tensor:
    """`‖UᵀU − I‖_F²` for `u (p, r)` with p ≥ r, else `‖UUᵀ − I‖_F²`; a 0-dim tensor."""
    if u.dim() != 2:
        raise ValueError(f"gram_deviation takes a matrix, got shape {tuple(u.shape)}")
    gram = u.T @ u if u.shape[0] >= u.shape[1] else u @ u.T
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return (gram - eye).pow(2).sum()


def _blocks(mat: torch.Tensor, groups: int) -> list[torch.Tensor]:
    return list(mat.chunk(groups, 0)) if groups > 1 else [mat]


def orthogonal_factors(layer: nn.Module) -> list[torch.Tensor]:
    """The basis-factor matrices of a factorized layer (see the module docstring); views of its
    parameters, so gradients flow. An empty list for unknown formats and dense layers."""
    if not isinstance(layer, FactorizedLayer):
        return []
    fmt = layer.format
    spec = layer.dense_spec
    g = getattr(spec, "groups", 1)
    if fmt == "tucker2":
        u_in = [b.T for b in _blocks(layer.first.weight[:, :, 0, 0], g)]
        u_out = _blocks(layer.last.weight[:, :, 0, 0], g)
        return u_in + u_out
    if fmt == "channel":
        return _blocks(layer.second.weight[:, :, 0, 0], g)
    if fmt == "spatial":
        n, r, kw = spec.out_channels, int(layer.rank), spec.kernel_size[1]
        v = layer.second.weight.reshape(g, n // g, r, kw).permute(0, 1, 3, 2)
        return list(v.reshape(g, n // g * kw, r).unbind(0))
    if fmt == "cp":
        b = [m.T for m in _blocks(layer.first.weight[:, :, 0, 0], g)]
        return _blocks(layer.last.weight[:, :, 0, 0], g) + b
    if fmt == "svd":
        return [layer.second.weight]
    if fmt == "tt":
        return [c.reshape(-1, c.shape[-1]) for c in list(layer.cores)[:-1]]
    return []


def factorized_layers(model: nn.Module) -> list[tuple[str, FactorizedLayer]]:
    """`(name, layer)` of every outermost factorized layer of `model`."""
    out: list[tuple[str, FactorizedLayer]] = []
    for name, mod in model.named_modules():
        if isinstance(mod, FactorizedLayer) and not any(name.startswith(p + ".") for p, _ in out):
            out.append((name, mod))
    return out


def orthogonality_penalty(model: nn.Module) -> torch.Tensor:
    """`Σ_layers Σ_U ‖UᵀU − I‖_F²` over `model`'s factorized layers (0-dim tensor; 0 if none).
    Computed in the parameters' dtype (the first factor's); differentiable."""
    terms = [gram_deviation(u) for _, layer in factorized_layers(model)
             for u in orthogonal_factors(layer)]
    if not terms:
        p = next(iter(model.parameters()), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return torch.stack([t.to(terms[0].dtype) for t in terms]).sum()


def layer_penalties(model: nn.Module) -> dict[str, float]:
    """`{layer name: Σ_U ‖UᵀU − I‖_F²}` (floats, no gradient), for reports."""
    with torch.no_grad():
        return {name: float(sum((gram_deviation(u) for u in orthogonal_factors(layer)),
                                torch.zeros(())))
                for name, layer in factorized_layers(model)}
