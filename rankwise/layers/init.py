"""Variance-matching initialization of factorized layers (for training from scratch, e.g. ELRT).

The target is the dense layer's Kaiming initialization: every entry of the dense weight
`W (n, c/g, kh, kw)` (or `(out, in)`) has variance

    σ² = gain² / fan,   gain² = 2 / (1 + a²) for "relu"/"leaky_relu", 1 for "linear",
    fan = (c/g)·kh·kw ("fan_in") or n·kh·kw ("fan_out")  — PyTorch's convention —

(Kaiming-normal uses std σ, Kaiming-uniform the bound √3·σ: the same variance). We choose the
factors so that the *effective* weight `layer.dense_weight()` has this variance: the "basis"
factors are orthonormal (Haar-random, QR of a Gaussian with the signs of diag(R) fixed), the
remaining factor ("core") is i.i.d. zero-mean with a variance derived below, so that
`E‖W_g‖_F² = n_g·c_g·kh·kw·σ²` for every group g (n_g = n/g, c_g = c/g). Because the Haar bases
are rotation invariant, each entry then has expected variance σ² as well.

Per format (per group; "orthonormal columns" = `UᵀU = I`, the orientation whose orthogonality
penalty `rankwise.regularizers.orthogonality_penalty` is 0 at init):

- tucker2: `W = G ×₁ U_out ×₂ U_in`, U_out (n_g × r_o) and U_in (c_g × r_i) with orthonormal
  columns, so `‖W‖_F = ‖G‖_F` exactly and `E‖G‖_F² = r_o·r_i·kh·kw·σ_G²`:
  **σ_G² = σ²·n_g·c_g / (r_o·r_i)**.
- channel: `W = A·B`, A (n_g × r) orthonormal columns, B (r × c_g·kh·kw): **σ_B² = σ²·n_g / r**.
- spatial: `W ≅ V·H`, V ((n_g·kw) × r) orthonormal columns, H (r × c_g·kh):
  **σ_H² = σ²·n_g·kw / r**.
- svd (linear): `W = U·V`, U (out × r) orthonormal columns, V (r × in): **σ_V² = σ²·out / r**.
- cp: `W = Σ_r a_r ∘ b_r ∘ h_r ∘ v_r`, A (n_g × R) and B (c_g × R) semi-orthonormal (orthonormal
  columns when R ≤ size, else orthonormal rows), h, v i.i.d. with variances σ_h², σ_v²; cross terms
  vanish in expectation, so `E‖W‖_F² = kh·kw·σ_h²·σ_v²·S` with `S = Σ_r ‖a_r‖²‖b_r‖²` (S = R when
  both are orthonormal columns): **σ_h² = σ_v² = sqrt(σ²·n_g·c_g / S)**.
- tt (linear): when every core k < d can be left-orthonormal (`r_{k-1}·m_k·n_k ≥ r_k`), cores
  1..d−1 are left-orthonormal (left unfolding with orthonormal columns), so `‖W‖_F = ‖G_d‖_F`:
  **σ_d² = σ²·out·in / (r_{d-1}·m_d·n_d)**; otherwise all cores are i.i.d. with one variance
  σ_c², and `E W_ij² = σ_c^{2d}·Π_{k<d} r_k`: **σ_c² = (σ² / Π_k r_k)^{1/d}**.

The dense bias (if any) gets PyTorch's default `U(−1/√fan_in, 1/√fan_in)` of the dense layer.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from rankwise.errors import ConfigError, UnsupportedLayerError
from rankwise.layers.base import DenseSpec, FactorizedLayer
from rankwise.layers.shapes import ConvSpec, LinearSpec

Mode = Literal["fan_in", "fan_out"]
Distribution = Literal["normal", "uniform"]


def dense_fans(spec: DenseSpec) -> tuple[int, int]:
    """`(fan_in, fan_out)` of the dense weight as PyTorch computes them: conv
    `((c/g)·kh·kw, n·kh·kw)`, linear `(in, out)`."""
    if isinstance(spec, LinearSpec):
        return spec.in_features, spec.out_features
    kh, kw = spec.kernel_size
    return spec.in_channels // spec.groups * kh * kw, spec.out_channels * kh * kw


def kaiming_std(spec: DenseSpec, mode: Mode = "fan_in", nonlinearity: str = "relu",
                a: float = 0.0) -> float:
    """Std `gain/√fan` of Kaiming init for the dense layer `spec` (`nn.init.calculate_gain`)."""
    if mode not in ("fan_in", "fan_out"):
        raise ConfigError(f"init mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = dense_fans(spec)
    fan = fan_in if mode == "fan_in" else fan_out
    param = a if nonlinearity == "leaky_relu" else None
    try:
        gain = nn.init.calculate_gain(nonlinearity, param)  # type: ignore[arg-type]
    except ValueError as e:
        raise ConfigError(f"unknown nonlinearity {nonlinearity!r} for Kaiming init ({e}); use "
                          "relu, leaky_relu, linear, tanh, ...") from e
    return gain / math.sqrt(fan)


def orthonormal(rows: int, cols: int, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Haar-random `(rows, cols)` matrix: orthonormal columns if rows ≥ cols, else rows."""
    tall = rows >= cols
    g = torch.randn(max(rows, cols), min(rows, cols), generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    d = torch.sign(torch.diagonal(r))
    q = q * torch.where(d == 0, torch.ones_like(d), d)
    return (q if tall else q.T).to(dtype)


def _random(shape: tuple[int, ...], std: float, dist: Distribution,
            generator: torch.Generator | None) -> torch.Tensor:
    """I.i.d. zero-mean entries of standard deviation `std` (normal, or uniform ±√3·std)."""
    if dist == "normal":
        return torch.randn(shape, generator=generator, dtype=torch.float64) * std
    if dist == "uniform":
        u = torch.rand(shape, generator=generator, dtype=torch.float64)
        return (2.0 * u - 1.0) * (math.sqrt(3.0) * std)
    raise ConfigError(f"init distribution must be 'normal' or 'uniform', got {dist!r}")


def _copy(param: torch.Tensor, value: torch.Tensor) -> None:
    with torch.no_grad():
        param.copy_(value.reshape(param.shape).to(dtype=param.dtype, device=param.device))


def _bias(layer: FactorizedLayer, spec: DenseSpec, generator: torch.Generator | None) -> None:
    bias = getattr(layer, "bias", None)
    if isinstance(bias, torch.Tensor):
        bound = 1.0 / math.sqrt(dense_fans(spec)[0])
        _copy(bias, (2.0 * torch.rand(bias.shape, generator=generator, dtype=torch.float64) - 1.0)
              * bound)


def _groups(spec: DenseSpec) -> tuple[int, int, int]:
    """`(g, n_g, c_g)`; linears are one group of (out, in)."""
    if isinstance(spec, LinearSpec):
        return 1, spec.out_features, spec.in_features
    g = spec.groups
    return g, spec.out_channels // g, spec.in_channels // g


def _init_tucker2(layer: nn.Module, spec: ConvSpec, var: float, dist: Distribution,
                  gen: torch.Generator | None) -> None:
    g, n_g, c_g = _groups(spec)
    r_o, r_i = layer.rank
    kh, kw = spec.kernel_size
    std_g = math.sqrt(var * n_g * c_g / (r_o * r_i))
    _copy(layer.first.weight, torch.cat([orthonormal(c_g, r_i, gen).T for _ in range(g)], 0))
    _copy(layer.core.weight, _random((g * r_o, r_i, kh, kw), std_g, dist, gen))
    _copy(layer.last.weight, torch.cat([orthonormal(n_g, r_o, gen) for _ in range(g)], 0))


def _init_channel(layer: nn.Module, spec: ConvSpec, var: float, dist: Distribution,
                  gen: torch.Generator | None) -> None:
    g, n_g, _ = _groups(spec)
    r = int(layer.rank)
    _copy(layer.second.weight, torch.cat([orthonormal(n_g, r, gen) for _ in range(g)], 0))
    _copy(layer.first.weight, _random(tuple(layer.first.weight.shape),
                                      math.sqrt(var * n_g / r), dist, gen))


def _init_spatial(layer: nn.Module, spec: ConvSpec, var: float, dist: Distribution,
                  gen: torch.Generator | None) -> None:
    g, n_g, _ = _groups(spec)
    r, kw = int(layer.rank), spec.kernel_size[1]
    # V per group: rows (o, x), columns k  ->  second.weight[o, k, 0, x]
    v = [orthonormal(n_g * kw, r, gen).reshape(n_g, kw, r).permute(0, 2, 1) for _ in range(g)]
    _copy(layer.second.weight, torch.cat(v, 0))
    _copy(layer.first.weight, _random(tuple(layer.first.weight.shape),
                                      math.sqrt(var * n_g * kw / r), dist, gen))


def _init_svd(layer: nn.Module, spec: LinearSpec, var: float, dist: Distribution,
              gen: torch.Generator | None) -> None:
    r = int(layer.rank)
    _copy(layer.second.weight, orthonormal(spec.out_features, r, gen))
    _copy(layer.first.weight, _random((r, spec.in_features),
                                      math.sqrt(var * spec.out_features / r), dist, gen))


def _init_cp(layer: nn.Module, spec: ConvSpec, var: float, dist: Distribution,
             gen: torch.Generator | None) -> None:
    g, n_g, c_g = _groups(spec)
    r = int(layer.rank)
    kh, kw = spec.kernel_size
    a_all, b_all, h_all, v_all = [], [], [], []
    for _ in range(g):
        a = orthonormal(n_g, r, gen)  # (n_g, R)
        b = orthonormal(c_g, r, gen)  # (c_g, R)
        s = float((a.pow(2).sum(0) * b.pow(2).sum(0)).sum())
        std = (var * n_g * c_g / s) ** 0.25
        a_all.append(a)
        b_all.append(b.T)
        h_all.append(_random((r, kh), std, dist, gen))
        v_all.append(_random((r, kw), std, dist, gen))
    _copy(layer.last.weight, torch.cat(a_all, 0))
    _copy(layer.first.weight, torch.cat(b_all, 0))
    _copy(layer.vertical.weight, torch.cat(h_all, 0))
    _copy(layer.horizontal.weight, torch.cat(v_all, 0))


def _init_tt(layer: nn.Module, spec: LinearSpec, var: float, dist: Distribution,
             gen: torch.Generator | None) -> None:
    cores = list(layer.cores)
    d = len(cores)
    left_ok = all(c.shape[0] * c.shape[1] * c.shape[2] >= c.shape[3] for c in cores[:-1])
    if left_ok:
        for c in cores[:-1]:
            rows = c.shape[0] * c.shape[1] * c.shape[2]
            _copy(c, orthonormal(rows, c.shape[3], gen))
        last = cores[-1]
        std = math.sqrt(var * spec.out_features * spec.in_features / last.numel())
        _copy(last, _random(tuple(last.shape), std, dist, gen))
        return
    internal = math.prod(int(c.shape[3]) for c in cores[:-1])
    std = math.sqrt((var / internal) ** (1.0 / d))
    for c in cores:
        _copy(c, _random(tuple(c.shape), std, dist, gen))


_INITS = {"tucker2": _init_tucker2, "channel": _init_channel, "spatial": _init_spatial,
          "svd": _init_svd, "cp": _init_cp, "tt": _init_tt}


def init_factorized_(layer: FactorizedLayer, mode: Mode = "fan_in", nonlinearity: str = "relu",
                     a: float = 0.0, distribution: Distribution = "normal",
                     generator: torch.Generator | None = None) -> FactorizedLayer:
    """Re-initialize `layer` in place so that `layer.dense_weight()` has the Kaiming variance
    `kaiming_std(layer.dense_spec, mode, nonlinearity, a)²` of the dense layer (see the module
    docstring for the per-format formulas), orthonormal basis factors, default dense bias.
    Sampling is in float64 from `generator` (global RNG when None). Returns `layer`."""
    init = _INITS.get(getattr(layer, "format", ""))
    if init is None:
        raise UnsupportedLayerError(
            f"no variance-matching init for {type(layer).__name__} (format "
            f"{getattr(layer, 'format', None)!r}); known formats: {sorted(_INITS)}")
    spec = layer.dense_spec
    var = kaiming_std(spec, mode, nonlinearity, a) ** 2
    init(layer, spec, var, distribution, generator)
    _bias(layer, spec, generator)
    return layer


def init_dense_(layer: nn.Module, mode: Mode = "fan_in", nonlinearity: str = "relu",
                a: float = 0.0, distribution: Distribution = "normal",
                generator: torch.Generator | None = None) -> nn.Module:
    """Kaiming-initialize a dense `nn.Conv2d` / `nn.Linear` with the same target as
    `init_factorized_` (weight std `kaiming_std`, default bias). Returns `layer`."""
    if isinstance(layer, nn.Conv2d):
        spec: DenseSpec = ConvSpec.from_conv(layer)
    elif isinstance(layer, nn.Linear):
        spec = LinearSpec.from_linear(layer)
    else:
        raise UnsupportedLayerError(f"init_dense_ takes nn.Conv2d or nn.Linear, got "
                                    f"{type(layer).__name__}")
    std = kaiming_std(spec, mode, nonlinearity, a)
    _copy(layer.weight, _random(tuple(layer.weight.shape), std, distribution, generator))
    if layer.bias is not None:
        bound = 1.0 / math.sqrt(dense_fans(spec)[0])
        _copy(layer.bias, (2.0 * torch.rand(layer.bias.shape, generator=generator,
                                            dtype=torch.float64) - 1.0) * bound)
    return layer
