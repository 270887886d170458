"""`erank-reg`: train a full-size model toward low rank with a spectral regularizer.

The survey's first finding is that effective rank is a better low-rank measure than ℓ1-type
sparsity measures of the spectrum. This method adds `λ · Σ_l m(σ(W_l))` to the training loss,
where `σ(W_l)` are the singular values of layer l's matricized weight (differentiable through
`torch.linalg.svdvals`) and the measure `m` is one of:

- "erank" (Roy & Vetterli 2007): `exp(−Σ p_i log p_i)`, `p = σ / ‖σ‖₁`; in [1, rank].
- "nuclear": the normalized nuclear norm `‖W‖_* / ‖W‖_F = ‖σ‖₁ / ‖σ‖₂`; in [1, √rank].
- "l1sv": the ℓ1 norm of the normalized spectrum `‖σ / σ_max‖₁`; in [1, rank].
All three are scale-invariant, so they only reshape the spectrum (weight decay still sets the
scale). Gradient of erank (used by the tests): with `S = ‖σ‖₁`, `H = −Σ p_i log p_i`,
`∂ erank / ∂σ_i = −erank · (log p_i + H) / S`.

Targets: every `nn.Conv2d` (grouped convs per group) and, unless `include_linear=False`, every
`nn.Linear`, including the sub-layers of factorized layers. Defaults (λ = 1e-3, every step) are
ours, not from a paper.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rankwise.analysis.layer_ranks import analyze_model, matricize_groups, summarize, to_markdown
from rankwise.errors import ConfigError
from rankwise.methods.base import CompressionMethod
from rankwise.methods.registry import register_method
from rankwise.options import option, validate

MEASURES = ("erank", "nuclear", "l1sv")
_TINY = 1e-30


def erank_measure(s: torch.Tensor) -> torch.Tensor:
    """Differentiable effective rank of singular values `s (k,)` (0·log 0 = 0); scalar."""
    total = s.sum()
    p = s / total.clamp_min(_TINY)
    h = -(p * torch.log(p.clamp_min(_TINY))).sum()
    return torch.exp(h)


def nuclear_measure(s: torch.Tensor) -> torch.Tensor:
    """`‖σ‖₁ / ‖σ‖₂` (= ‖W‖_* / ‖W‖_F), scalar; 0 for a zero spectrum."""
    return s.sum() / torch.linalg.vector_norm(s).clamp_min(_TINY)


def l1sv_measure(s: torch.Tensor) -> torch.Tensor:
    """`‖σ / σ_max‖₁`, scalar; 0 for a zero spectrum."""
    return s.sum() / s.max().clamp_min(_TINY)


MEASURE_FNS = {"erank": erank_measure, "nuclear": nuclear_measure, "l1sv": l1sv_measure}


@dataclass
class ERankRegConfig:
    """Options of the spectral regularizer (CLI `--erank-reg-<field>`)."""

    measure: str = option("erank", choices=MEASURES, aliases=("--reg",),
                          help="spectral measure: erank, nuclear (‖σ‖₁/‖σ‖₂) or l1sv")
    weight: float = option(1e-3, low=0.0, aliases=("--reg-weight",), help="λ")
    scheme: str = option("channel", choices=("channel", "spatial"),
                         help="conv matricization")
    include_linear: bool = option(True, flag="no-linear", help="regularize convs only")
    normalize: bool = option(False, help="divide each layer's measure by its max rank")
    period: int = option(1, low=1, help="apply the regularizer every N steps")

    def __post_init__(self) -> None:
        validate(self)


def regularized_layers(model: nn.Module,
                       include_linear: bool = True) -> list[tuple[str, nn.Module]]:
    """`(name, module)` of the conv (and linear) layers the regularizer acts on."""
    types: tuple[type[nn.Module], ...] = ((nn.Conv2d, nn.Linear) if include_linear
                                          else (nn.Conv2d,))
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, types) and isinstance(getattr(m, "weight", None), torch.Tensor)]


def layer_spectrum(mod: nn.Module, scheme: str = "channel") -> torch.Tensor:
    """Differentiable singular values `(Σ_g min(p, q),)` of a layer's matricized weight."""
    m = matricize_groups(mod.weight, scheme, int(getattr(mod, "groups", 1)))
    return torch.linalg.svdvals(m).reshape(-1)


def spectral_penalty(model: nn.Module, measure: str = "erank", scheme: str = "channel",
                     include_linear: bool = True, normalize: bool = False) -> torch.Tensor:
    """`Σ_l m(σ(W_l))` (divided by each layer's max rank if `normalize`), a differentiable
    scalar. Raises `ConfigError` if the model has no target layer."""
    if measure not in MEASURE_FNS:
        raise ConfigError(f"unknown spectral measure {measure!r}; choose one of {MEASURES}")
    fn = MEASURE_FNS[measure]
    layers = regularized_layers(model, include_linear)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no nn.Conv2d"
                          f"{' / nn.Linear' if include_linear else ''} weight to regularize")
    terms = []
    for _, mod in layers:
        s = layer_spectrum(mod, scheme)
        v = fn(s)
        terms.append(v / s.numel() if normalize else v)
    return torch.stack(terms).sum()


@register_method("erank-reg")
class EffectiveRankRegularizer(CompressionMethod):
    """`loss += weight · spectral_penalty(model)` every `period` steps (`penalty()`).

    `EffectiveRankRegularizer(model, measure="erank", weight=1e-3)`; call `before_forward(t)`
    each step so that `period` is honoured; `last_penalty` is the last unweighted value.
    """

    config_cls = ERankRegConfig

    def __init__(self, model: nn.Module, config: ERankRegConfig | None = None,
                 **options: Any) -> None:
        base = config if config is not None else ERankRegConfig()
        self.cfg = dataclasses.replace(base, **options) if options else base
        self.model = model
        self.step = 0
        self.last_penalty: float | None = None
        if not regularized_layers(model, self.cfg.include_linear):
            raise ConfigError(f"erank-reg: {type(model).__name__} has no nn.Conv2d"
                              f"{' / nn.Linear' if self.cfg.include_linear else ''} weight to "
                              "regularize")

    def before_forward(self, step: int) -> None:
        self.step = int(step)

    def penalty(self) -> torch.Tensor | None:
        cfg = self.cfg
        if cfg.weight == 0.0 or self.step % int(cfg.period):
            return None
        pen = spectral_penalty(self.model, cfg.measure, cfg.scheme, cfg.include_linear,
                               cfg.normalize)
        self.last_penalty = float(pen.detach())
        return cfg.weight * pen

    def finalize(self, model: nn.Module | None = None, **kwargs: Any
                 ) -> tuple[nn.Module, dict[str, Any]]:
        """`(model, report)`: the per-layer rank analysis (no conversion)."""
        model = model if model is not None else self.model
        stats = analyze_model(model, self.cfg.scheme)
        summary = {"measure": self.cfg.measure, "weight": self.cfg.weight, **summarize(stats),
                   "sum_erank": sum(s.erank for s in stats)}
        return model, {"summary": summary, "layers": [s.to_dict(False) for s in stats],
                       "markdown": to_markdown(stats, f"Rank analysis after erank-reg "
                                               f"({self.cfg.measure}, λ={self.cfg.weight:g})",
                                               self.cfg.scheme)}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "last_penalty": self.last_penalty}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
        self.last_penalty = state.get("last_penalty")


__all__ = ["MEASURES", "ERankRegConfig", "EffectiveRankRegularizer", "erank_measure",
           "l1sv_measure", "layer_spectrum", "nuclear_measure", "regularized_layers",
           "spectral_penalty"]
