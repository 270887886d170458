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

import argparse
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rankwise.analysis.layer_ranks import analyze_model, matricize_groups, summarize, to_markdown
from rankwise.errors import ConfigError
from rankwise.methods.base import Method
from rankwise.train.hooks import Hook

if TYPE_CHECKING:
    from rankwise.train import Trainer

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
    """measure: erank|nuclear|l1sv; weight: λ; scheme: conv matricization channel|spatial;
    include_linear: regularize nn.Linear too; normalize: divide each layer's measure by its
    max rank; period: apply every `period` steps (1 = every step)."""

    measure: str = "erank"
    weight: float = 1e-3
    scheme: str = "channel"
    include_linear: bool = True
    normalize: bool = False
    period: int = 1

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise ConfigError(f"--erank-reg-measure {self.measure!r}: choose one of {MEASURES}")
        if self.scheme not in ("channel", "spatial"):
            raise ConfigError(f"--erank-reg-scheme {self.scheme!r}: choose channel or spatial")
        if not self.weight >= 0.0:
            raise ConfigError(f"--erank-reg-weight must be >= 0, got {self.weight}")
        if int(self.period) < 1:
            raise ConfigError(f"--erank-reg-period must be >= 1, got {self.period}")


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


class ERankRegHook(Hook):
    """Adds `weight · spectral_penalty(model)` to the loss every `period` steps."""

    def __init__(self, cfg: ERankRegConfig) -> None:
        self.cfg = cfg
        self.step = 0
        self.last_penalty: float | None = None

    def on_batch_start(self, trainer: Trainer, step: int) -> None:
        self.step = int(step)

    def extra_loss(self, trainer: Trainer | None, model: nn.Module) -> torch.Tensor | None:
        cfg = self.cfg
        if cfg.weight == 0.0 or self.step % int(cfg.period):
            return None
        penalty = spectral_penalty(model, cfg.measure, cfg.scheme, cfg.include_linear,
                                   cfg.normalize)
        self.last_penalty = float(penalty.detach())
        return cfg.weight * penalty

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "last_penalty": self.last_penalty}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
        self.last_penalty = state.get("last_penalty")


class ERankRegMethod(Method):
    """Dense training plus a spectral (effective-rank / ℓ1-type) regularizer."""

    name = "erank-reg"
    config_class = ERankRegConfig
    help = "dense training + λ·Σ erank(W) (or nuclear / l1sv) regularizer toward low rank"

    def add_arguments(self, parser: argparse.ArgumentParser | Any) -> None:
        opts = [
            (("--erank-reg-measure", "--reg"), dict(dest="erank_reg_measure", default="erank",
                                                    choices=MEASURES,
                                                    help="spectral measure (default erank)")),
            (("--erank-reg-weight", "--reg-weight"), dict(dest="erank_reg_weight", type=float,
                                                          default=1e-3, help="λ (default 1e-3)")),
        ]
        for names, kw in opts:
            try:
                parser.add_argument(*names, **kw)
            except argparse.ArgumentError:  # the short alias is taken by another method
                parser.add_argument(names[0], **kw)
        parser.add_argument("--erank-reg-scheme", default="channel", choices=("channel", "spatial"),
                            help="conv matricization (default channel)")
        parser.add_argument("--erank-reg-no-linear", action="store_true",
                            help="regularize convs only")
        parser.add_argument("--erank-reg-normalize", action="store_true",
                            help="divide each layer's measure by its max rank")
        parser.add_argument("--erank-reg-period", type=int, default=1,
                            help="apply the regularizer every N steps (default 1)")

    def config_from_args(self, args: argparse.Namespace) -> ERankRegConfig:
        return ERankRegConfig(
            measure=getattr(args, "erank_reg_measure", "erank"),
            weight=float(getattr(args, "erank_reg_weight", 1e-3)),
            scheme=getattr(args, "erank_reg_scheme", "channel"),
            include_linear=not getattr(args, "erank_reg_no_linear", False),
            normalize=bool(getattr(args, "erank_reg_normalize", False)),
            period=int(getattr(args, "erank_reg_period", 1)),
        )

    def hooks(self, cfg: ERankRegConfig) -> list[Hook]:
        return [ERankRegHook(cfg)]

    def finalize(self, trainer: Trainer, cfg: ERankRegConfig) -> dict[str, Any]:
        """Write `erank_report.json` / `.md` (per-layer rank analysis) into the run dir."""
        stats = analyze_model(trainer.model, cfg.scheme)
        summary = {"measure": cfg.measure, "weight": cfg.weight, **summarize(stats),
                   "sum_erank": sum(s.erank for s in stats)}
        if getattr(trainer, "is_main", True):
            out = trainer.out_dir
            out.mkdir(parents=True, exist_ok=True)
            (out / "erank_report.json").write_text(json.dumps(
                {"summary": summary, "layers": [s.to_dict(False) for s in stats]}, indent=2))
            (out / "erank_report.md").write_text(
                to_markdown(stats, f"Rank analysis after erank-reg ({cfg.measure}, "
                                   f"λ={cfg.weight:g})", cfg.scheme))
        return summary


METHOD = ERankRegMethod()
