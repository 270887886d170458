"""Tensor-train linear layer (Novikov et al. 2015, "Tensorizing neural networks"), format "tt".

`W (out, in)` with `out = Π m_k`, `in = Π n_k` is viewed as the d-way tensor with modes
`(m_1·n_1, ..., m_d·n_d)` (row index `(i_1..i_d)` and column index `(j_1..j_d)` both row-major)
and stored as TT cores `G_k (r_{k-1}, m_k, n_k, r_k)`, `r_0 = r_d = 1`:
`W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] ⋯ G_d[:, i_d, j_d, :]`.
Rank is the tuple of the d−1 internal ranks `(r_1, ..., r_{d-1})`.

Modes default to a balanced factorization of each dimension into `d = 3` factors
(`balanced_modes`), out modes ascending and in modes descending: `forward` contracts core 1 first,
and its MACs `Σ_k (Π_{j≤k} m_j)(Π_{j≥k} n_j)·r_{k-1}·r_k` are smallest when the early m's are small
and the early n's large. Pass `in_modes` / `out_modes` (equal lengths ≥ 2) to choose them. They are
stored in `spec_options()`, and `max_rank` / `spectra` / `cost` accept the same keywords.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any

import torch
from torch import nn

from rankwise.errors import ConfigError, RankError, UnsupportedLayerError
from rankwise.layers.base import DenseSpec, FactorizedLayer, Rank, register_format
from rankwise.layers.shapes import LinearSpec, Pair
from rankwise.linalg.tt import tt_max_ranks, tt_reconstruct, tt_svd, tt_unfolding_spectra

DEFAULT_D = 3


def balanced_modes(size: int, d: int = DEFAULT_D) -> tuple[int, ...]:
    """`size` as a product of `d` factors as equal as possible (ascending; 1s where `size` has
    fewer than d prime factors). Greedy: each prime, largest first, multiplies the smallest bin."""
    primes, m, p = [], int(size), 2
    while p * p <= m:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    if m > 1:
        primes.append(m)
    bins = [1] * d
    for q in sorted(primes, reverse=True):
        bins[bins.index(min(bins))] *= q
    return tuple(sorted(bins))


def _prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _as_linear_spec(spec: DenseSpec) -> LinearSpec:
    if not isinstance(spec, LinearSpec):
        raise UnsupportedLayerError(
            f"format 'tt' factorizes nn.Linear, got a spec of {type(spec).__name__}; use "
            "'tucker2', 'cp', 'channel' or 'spatial' for convolutions"
        )
    return spec


def _describe(spec: LinearSpec, name: str | None) -> str:
    return f"{name or '<unnamed>'} (Linear {spec.in_features}→{spec.out_features})"


def resolve_modes(spec: DenseSpec, in_modes: Sequence[int] | None = None,
                  out_modes: Sequence[int] | None = None, d: int = DEFAULT_D,
                  name: str | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`(in_modes, out_modes)`: the given ones validated, or `balanced_modes(·, d)` of each
    dimension (in modes reversed, i.e. descending). Raises `ConfigError` when products or
    lengths do not match."""
    spec = _as_linear_spec(spec)
    ins = tuple(int(m) for m in in_modes) if in_modes is not None else None
    outs = tuple(int(m) for m in out_modes) if out_modes is not None else None
    length = len(ins) if ins is not None else len(outs) if outs is not None else d
    ins = ins if ins is not None else balanced_modes(spec.in_features, length)[::-1]
    outs = outs if outs is not None else balanced_modes(spec.out_features, length)
    where = _describe(spec, name)
    if len(ins) != len(outs) or len(ins) < 2 or min(ins + outs) < 1:
        raise ConfigError(
            f"tt modes for {where} must be two equally long lists (≥ 2 entries ≥ 1), got "
            f"in_modes={list(ins)}, out_modes={list(outs)}"
        )
    if _prod(ins) != spec.in_features or _prod(outs) != spec.out_features:
        raise ConfigError(
            f"tt modes for {where} must multiply to the layer's sizes: Π in_modes={_prod(ins)} "
            f"(need {spec.in_features}), Π out_modes={_prod(outs)} (need {spec.out_features})"
        )
    return ins, outs


@register_format
class TTLinear(FactorizedLayer):
    """TT linear: cores `G_k (r_{k-1}, m_k, n_k, r_k)` contracted with the input, plus bias."""

    format = "tt"
    dense_type = nn.Linear

    def __init__(self, spec: LinearSpec, rank: tuple[int, ...], in_modes: tuple[int, ...],
                 out_modes: tuple[int, ...]) -> None:
        super().__init__()
        self.dense_spec = spec
        self._rank = rank
        self.in_modes, self.out_modes = in_modes, out_modes
        ranks = (1, *rank, 1)
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(ranks[k], out_modes[k], in_modes[k], ranks[k + 1]))
            for k in range(len(in_modes))
        )
        self.bias = nn.Parameter(torch.empty(spec.out_features)) if spec.bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gaussian cores scaled so that each dense entry has nn.Linear's default variance
        `1/(3·in)`; bias `U(−1/√in, 1/√in)` as in nn.Linear."""
        fan_in = self.dense_spec.in_features
        var = 1.0 / (3.0 * fan_in) / _prod(self._rank)
        std = var ** (0.5 / len(self.cores))
        with torch.no_grad():
            for g in self.cores:
                g.normal_(0.0, std)
            if self.bias is not None:
                self.bias.uniform_(-(fan_in ** -0.5), fan_in ** -0.5)

    # ----- rank bookkeeping -------------------------------------------------------------------
    @classmethod
    def max_rank(cls, spec: DenseSpec, **modes: Any) -> tuple[int, ...]:
        """`r_k ≤ min(Π_{j≤k} m_j·n_j, Π_{j>k} m_j·n_j)`, k = 1..d−1 (sizes of unfolding k)."""
        ins, outs = resolve_modes(spec, **modes)
        return tt_max_ranks([m * n for m, n in zip(outs, ins, strict=True)])

    @classmethod
    def check_rank(cls, spec: LinearSpec, rank: Any, name: str | None = None,
                   **modes: Any) -> tuple[int, ...]:
        """`rank` as a (d−1)-tuple, or `RankError` naming the layer, its limit and the fix."""
        limit = cls.max_rank(spec, name=name, **modes)
        where = _describe(spec, name)
        if (not isinstance(rank, (tuple, list)) or len(rank) != len(limit)
                or not all(isinstance(r, Integral) and not isinstance(r, bool) for r in rank)):
            raise RankError(
                f"tt rank for {where} must be a tuple of {len(limit)} internal TT ranks (one per "
                f"pair of adjacent cores), got {rank!r}; the limit is {limit}, pass e.g. "
                f"rank={tuple(max(1, r // 2) for r in limit)}"
            )
        r = tuple(int(x) for x in rank)
        if min(r) < 1 or any(a > b for a, b in zip(r, limit, strict=True)):
            raise RankError(
                f"tt rank {r} is invalid for {where}: each entry must be ≥ 1 and at most the "
                f"limit {limit}; lower the offending entries"
            )
        return r

    # ----- construction -----------------------------------------------------------------------
    @classmethod
    def from_dense(cls, layer: nn.Module, rank: Rank, *, name: str | None = None,
                   in_modes: Sequence[int] | None = None, out_modes: Sequence[int] | None = None,
                   d: int = DEFAULT_D) -> TTLinear:
        """TT-SVD (float64) of `layer.weight (out, in)` reshaped to `(m_k·n_k)_k`, cast back."""
        if not isinstance(layer, nn.Linear):
            raise UnsupportedLayerError(
                f"tt factorizes nn.Linear, but {name or '<unnamed>'} is {type(layer).__name__}; "
                "use 'tucker2', 'cp', 'channel' or 'spatial' for convolutions"
            )
        spec = LinearSpec.from_linear(layer)
        ins, outs = resolve_modes(spec, in_modes, out_modes, d, name)
        r = cls.check_rank(spec, rank, name, in_modes=ins, out_modes=outs)
        t = cls.weight_tensor(layer.weight.detach().to(torch.float64), ins, outs)
        cores = tt_svd(t, r)
        out = cls(spec, r, ins, outs).to(device=layer.weight.device, dtype=layer.weight.dtype)
        with torch.no_grad():
            for p, g, m, n in zip(out.cores, cores, outs, ins, strict=True):
                p.copy_(g.reshape(g.shape[0], m, n, g.shape[2]))
            if layer.bias is not None:
                out.bias.copy_(layer.bias)
        return out

    @classmethod
    def from_spec(cls, spec: DenseSpec, rank: Rank, *, name: str | None = None,
                  in_modes: Sequence[int] | None = None, out_modes: Sequence[int] | None = None,
                  d: int = DEFAULT_D, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> TTLinear:
        """Fresh layer (see `reset_parameters`)."""
        spec = _as_linear_spec(spec)
        ins, outs = resolve_modes(spec, in_modes, out_modes, d, name)
        r = cls.check_rank(spec, rank, name, in_modes=ins, out_modes=outs)
        return cls(spec, r, ins, outs).to(device=device, dtype=dtype)

    def spec_options(self) -> dict[str, Any]:
        return {"in_modes": list(self.in_modes), "out_modes": list(self.out_modes)}

    # ----- policies and counting --------------------------------------------------------------
    @staticmethod
    def weight_tensor(w: torch.Tensor, in_modes: Sequence[int],
                      out_modes: Sequence[int]) -> torch.Tensor:
        """`(out, in)` → d-way `(m_1·n_1, ..., m_d·n_d)` (the tensor whose TT cores we store)."""
        d = len(in_modes)
        t = w.reshape(*out_modes, *in_modes)
        perm = [i for k in range(d) for i in (k, d + k)]
        return t.permute(perm).reshape([m * n for m, n in zip(out_modes, in_modes, strict=True)])

    @classmethod
    def spectra(cls, weight: torch.Tensor, spec: DenseSpec, **modes: Any) -> list[torch.Tensor]:
        """σ of each unfolding k of `weight_tensor(weight)`, lengths `max_rank(spec)`."""
        ins, outs = resolve_modes(spec, **modes)
        return tt_unfolding_spectra(cls.weight_tensor(weight.detach().to(torch.float64), ins, outs))

    @classmethod
    def cost(cls, spec: DenseSpec, rank: Rank, input_hw: Pair | None = None,
             **modes: Any) -> tuple[int, int]:
        """params = Σ_k r_{k-1}·m_k·n_k·r_k (+ out bias); MACs per input row (`input_hw` ignored)
        of the core-by-core contraction in `forward`: Σ_k (Π_{j≤k} m_j)(Π_{j≥k} n_j)·r_{k-1}·r_k."""
        spec = _as_linear_spec(spec)
        ins, outs = resolve_modes(spec, **modes)
        ranks = (1, *cls.check_rank(spec, rank, in_modes=ins, out_modes=outs), 1)
        params = sum(ranks[k] * outs[k] * ins[k] * ranks[k + 1] for k in range(len(ins)))
        macs = sum(_prod(outs[:k + 1]) * _prod(ins[k:]) * ranks[k] * ranks[k + 1]
                   for k in range(len(ins)))
        return params + (spec.out_features if spec.bias else 0), macs

    def params(self) -> int:
        return self.cost(self.dense_spec, self._rank, **self.spec_options())[0]

    def macs(self, input_hw: Pair | None = None) -> int:
        return self.cost(self.dense_spec, self._rank, input_hw, **self.spec_options())[1]

    # ----- forward and reconstruction ---------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x (*, in)` → `(*, out)`, contracting one core at a time (no dense weight).

        Mode sizes are read from the cores' shapes, so the method scripts with TorchScript."""
        # state (B, Π m_done, r_{k-1}, Π n_rest)
        state = x.reshape(-1, 1, 1, x.shape[-1])
        for g in self.cores:
            bb, m_done, r, n_rest = state.shape[0], state.shape[1], state.shape[2], state.shape[3]
            n = g.shape[2]
            state = state.reshape(bb, m_done, r, n, n_rest // n)
            state = torch.einsum("bapnq,pmnr->bamrq", state, g)
            state = state.reshape(bb, m_done * g.shape[1], g.shape[3], n_rest // n)
        y = state.reshape(list(x.shape[:-1]) + [-1])
        bias = self.bias
        if bias is not None:
            y = y + bias
        return y

    def dense_weight(self) -> torch.Tensor:
        """`(out, in)` reconstructed from the cores."""
        d = len(self.cores)
        t = tt_reconstruct([g.reshape(g.shape[0], -1, g.shape[3]) for g in self.cores])
        t = t.reshape([s for m, n in zip(self.out_modes, self.in_modes, strict=True)
                       for s in (m, n)])
        perm = [2 * k for k in range(d)] + [2 * k + 1 for k in range(d)]
        return t.permute(perm).reshape(self.dense_spec.out_features, self.dense_spec.in_features)

    def extra_repr(self) -> str:
        s = self.dense_spec
        return (f"rank={self._rank}, {s.in_features}→{s.out_features}, "
                f"in_modes={self.in_modes}, out_modes={self.out_modes}, bias={s.bias}")
