"""SFW — compression-aware training with Stochastic Frank-Wolfe (Zimmer, Spiegel, Pokutta;
arXiv 2205.11921) as a method, plus the reference code's nuclear-norm penalty baseline.

`--method sfw` trains with `rankwise.optim.SFW`: one param group per parameter from
`make_param_groups` (structured settings put the chosen set on every Conv2d weight and an L2 ball
on everything else), radii `D = 2 · width · E‖W_init‖_F`, the initialization rescaled into the
feasible region, no weight decay (`--wd` is ignored with a warning), the trainer's per-iteration
lr schedule acting on every group's `lr`. After training, `finalize` checks feasibility, writes
`RUN/sfw_report.json` and runs the compression sweep (`rankwise.compress.sweep`, no retraining)
into `RUN/sweep-lowrank/` and/or `RUN/sweep-filters/` (sweep.json, sweep.md, sweep.png).

`--method nuclear-penalty` is SGD + `λ · Σ_conv ‖W.flatten(1)‖_*` (reference code's
`Nuclear_Conv` group penalty): its gradient term `λ · U Vᵀ` (full SVD, every step, every conv)
is TRP's "Nu" sub-gradient `λ · U_r V_rᵀ` at energy 1.0 (r = the numerical rank, i.e. the
minimum-norm sub-gradient), so it reuses `rankwise.methods.trp.TRPHook` with weight substitution
off, energy 1.0, period 1 and every conv targeted; `finalize` runs the same sweep as SFW.
Defaults not from the paper (ours): the sweep ratios, `λ = 3e-4` (TRP's README value).
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rankwise.compress.sweep import (
    DEFAULT_RATIOS,
    SCHEMES,
    filter_sweep,
    lowrank_sweep,
    parse_ratios,
    write_sweep,
)
from rankwise.errors import ConfigError
from rankwise.methods.base import Method
from rankwise.methods.trp import TRPConfig, TRPHook
from rankwise.optim import CONSTRAINTS, SFW, make_param_groups, shift_model_to_feasible
from rankwise.optim.sfw import MOMENTUM_STYLES
from rankwise.train.hooks import Hook

if TYPE_CHECKING:
    from rankwise.train import TrainConfig, Trainer

SFW_CONSTRAINTS = tuple(c for c in CONSTRAINTS if c != "unconstrained")
RESCALE_CHOICES = ("gradient", "diameter", "fast_gradient", "none")
SWEEPS = ("auto", "lowrank", "filters", "both", "none")
LMO_METHODS = ("power", "exact", "lowrank")
FEASIBILITY_TOL = 1e-4
"""Relative slack on `‖θ‖_C ≤ r` in the final check (float32 rounding of the convex steps)."""


def parse_k(text: str | int | float) -> int | float:
    """`"8"` → 8 (a count), `"0.3"` / `"1.0"` → a float fraction; ConfigError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return text
    s = str(text).strip()
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError as e:
        raise ConfigError(f"--sfw-k {text!r}: expected an int count (8) or a fraction (0.3)") \
            from e


@dataclass
class SweepOptions:
    """What `finalize` sweeps: kind auto|lowrank|filters|both|none ("auto": filters for
    group-k-support, low-rank otherwise), ratios, conv matricization for the low-rank sweep."""

    sweep: str = "auto"
    sweep_ratios: tuple[float, ...] = DEFAULT_RATIOS
    sweep_scheme: str = "channel"

    def check_sweep(self, flag: str) -> None:
        self.sweep_ratios = tuple(float(s) for s in self.sweep_ratios)
        if self.sweep not in SWEEPS:
            raise ConfigError(f"{flag} {self.sweep!r}: choose one of {SWEEPS}")
        if self.sweep_scheme not in SCHEMES:
            raise ConfigError(f"{flag}-scheme {self.sweep_scheme!r}: choose one of {SCHEMES}")
        if any(not 0.0 <= s < 1.0 for s in self.sweep_ratios):
            raise ConfigError(f"{flag}-ratios {self.sweep_ratios}: every ratio must be in [0, 1)")


@dataclass
class SFWConfig(SweepOptions):
    """SFW options (flags `--sfw-<field>`); defaults of the reference's example config.

    - `constraint`: set on Conv2d weights (structured) or on every parameter (others).
    - `k`: int count or float fraction (of the max rank / filters / entries), 0.3.
    - `width`: `D = 2 · width · E‖W_init‖_F`, 10.
    - `rescale`: step-size rule gradient|diameter|fast_gradient|none; `momentum` 0.9,
      `momentum_style` heavy_ball (compression-aware-SFW) or ema (StochasticFrankWolfe).
    - `include_linear`: structured sets on Linear weights too.
    - `lmo_method` power|exact|lowrank and `lmo_steps` (None: 20 for nuclear, 10 for top-K).
    """

    constraint: str = "spectral-k-support"
    k: int | float = 0.3
    width: float = 10.0
    rescale: str = "gradient"
    momentum: float = 0.9
    momentum_style: str = "heavy_ball"
    include_linear: bool = False
    lmo_method: str = "power"
    lmo_steps: int | None = None

    def __post_init__(self) -> None:
        self.k = parse_k(self.k)
        checks = [
            (self.constraint in SFW_CONSTRAINTS,
             f"constraint {self.constraint!r} unknown; choose one of {SFW_CONSTRAINTS}"),
            (self.width > 0 and math.isfinite(self.width), f"width must be > 0, got {self.width}"),
            (self.rescale in RESCALE_CHOICES, f"rescale must be one of {RESCALE_CHOICES}"),
            (0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.momentum_style in MOMENTUM_STYLES,
             f"momentum_style must be one of {MOMENTUM_STYLES}"),
            (self.lmo_method in LMO_METHODS, f"lmo_method must be one of {LMO_METHODS}"),
            (self.lmo_steps is None or int(self.lmo_steps) >= 1, "lmo_steps must be >= 1"),
            (isinstance(self.k, float) and 0 < self.k <= 1 or isinstance(self.k, int)
             and self.k >= 1, f"k must be an int >= 1 or a fraction in (0, 1], got {self.k}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"SFWConfig: {msg} (--sfw-* flags)")
        self.check_sweep("--sfw-sweep")

    def sweep_kinds(self) -> tuple[str, ...]:
        if self.sweep == "auto":
            return ("filters",) if self.constraint == "group-k-support" else ("lowrank",)
        return {"both": ("lowrank", "filters"), "none": ()}.get(self.sweep, (self.sweep,))


def build_sfw(model: nn.Module, lr: float, cfg: SFWConfig, seed: int = 0) -> SFW:
    """Param groups of `cfg`, the model's weights shifted into them (in place), and the SFW."""
    opts: dict[str, Any] = {"method": cfg.lmo_method, "seed": int(seed)}
    if cfg.lmo_steps is not None:
        opts["steps"] = int(cfg.lmo_steps)
    groups = make_param_groups(model, constraint=cfg.constraint, k=cfg.k, width=cfg.width,
                               include_linear=cfg.include_linear, **opts)
    shift_model_to_feasible(model, groups)
    return SFW(groups, lr=lr, momentum=cfg.momentum, momentum_style=cfg.momentum_style,
               rescale=None if cfg.rescale == "none" else cfg.rescale)


@torch.no_grad()
def feasibility(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`‖θ‖_C / r` of every bounded group: max ratio, count above `1 + FEASIBILITY_TOL`, rows."""
    rows = []
    for i, g in enumerate(optimizer.param_groups):
        c = g.get("constraint")
        if c is None or not c.bounded:
            continue
        ratio = c.norm(list(g["params"])) / c.radius
        rows.append({"name": str(g.get("name", i)), "constraint": c.name, "radius": c.radius,
                     "norm_ratio": ratio})
    worst = max((r["norm_ratio"] for r in rows), default=0.0)
    bad = sum(1 for r in rows if r["norm_ratio"] > 1.0 + FEASIBILITY_TOL)
    return {"groups": len(rows), "max_norm_ratio": worst, "infeasible_groups": bad,
            "feasible": bad == 0, "layers": rows}


class SFWMonitor(Hook):
    """Adds the mean step size η of the epoch's last SFW step to the epoch metrics (`sfw_eta`)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        etas = [float(e) for e in getattr(trainer.optimizer, "last_eta", [])]
        etas = [e for e in etas if math.isfinite(e)]
        if etas:
            metrics["sfw_eta"] = sum(etas) / len(etas)


def run_sweeps(trainer: Trainer, opts: SweepOptions, kinds: tuple[str, ...],
               label: str) -> dict[str, Any]:
    """The sweeps `kinds` on `trainer.model` / `trainer.test_data`, written to `RUN/sweep-KIND/`
    (main process only). Returns `{kind: [{"ratio", "acc", "stability", "compression"}...]}`."""
    if trainer.test_data is None or not kinds or not trainer.is_main:
        return {}
    shape = tuple(trainer.meta.get("input_shape") or trainer.train_data.shape)
    common = dict(input_shape=shape, batch_size=trainer.cfg.eval_batch_size,
                  device=trainer.device)
    out: dict[str, Any] = {}
    for kind in kinds:
        if kind == "lowrank":
            rows = lowrank_sweep(trainer.model, trainer.test_data, opts.sweep_ratios,
                                 scheme=opts.sweep_scheme, **common)
        else:
            rows = filter_sweep(trainer.model, trainer.test_data, opts.sweep_ratios, **common)
        write_sweep(Path(trainer.out_dir) / f"sweep-{kind}", {label: rows}, kind,
                    meta={"run": str(trainer.out_dir), "method": label})
        out[kind] = [{k: r[k] for k in ("ratio", "acc", "stability", "compression")}
                     for r in rows]
    return out


def rank_summary(model: nn.Module, scheme: str = "channel") -> dict[str, float]:
    """Model-level effective-rank numbers (`rankwise.analysis.summarize`) of conv/linear layers."""
    from rankwise.analysis.layer_ranks import analyze_model, summarize

    return summarize(analyze_model(model, scheme))


def _add_sweep_arguments(parser: Any, prefix: str, d: SweepOptions) -> None:
    parser.add_argument(f"--{prefix}-sweep", choices=SWEEPS, default=d.sweep,
                        help="post-training sweep without retraining (auto: filters for "
                             "group-k-support, low-rank otherwise)")
    parser.add_argument(f"--{prefix}-sweep-ratios", default=",".join(f"{s:g}" for s in
                                                                     d.sweep_ratios),
                        help="comma-separated fractions of rank/filters removed")
    parser.add_argument(f"--{prefix}-sweep-scheme", choices=SCHEMES, default=d.sweep_scheme,
                        help="conv matricization of the low-rank sweep")


def _sweep_kwargs(args: argparse.Namespace, prefix: str, d: SweepOptions) -> dict[str, Any]:
    key = prefix.replace("-", "_")
    ratios = getattr(args, f"{key}_sweep_ratios", None)
    return {"sweep": getattr(args, f"{key}_sweep", d.sweep),
            "sweep_ratios": parse_ratios(ratios) if ratios is not None else d.sweep_ratios,
            "sweep_scheme": getattr(args, f"{key}_sweep_scheme", d.sweep_scheme)}


class SFWMethod(Method):
    """`rankwise train --method sfw`: the SFW optimizer; feasibility check + sweep after."""

    name = "sfw"
    config_class = SFWConfig
    help = ("compression-aware training with Stochastic Frank-Wolfe (Zimmer et al. 2022): "
            "norm-ball constraints, no weight decay, then a no-retraining compression sweep")

    def add_arguments(self, parser: Any) -> None:
        d = SFWConfig()
        parser.add_argument("--sfw-constraint", choices=SFW_CONSTRAINTS, default=d.constraint,
                            help="constraint set (structured ones act on conv weights)")
        parser.add_argument("--sfw-k", type=parse_k, default=d.k,
                            help="K: int count or float fraction of max rank/filters/entries")
        parser.add_argument("--sfw-width", type=float, default=d.width,
                            help="radius factor: D = 2·width·E‖W_init‖_F")
        parser.add_argument("--sfw-rescale", choices=RESCALE_CHOICES, default=d.rescale,
                            help="step-size rule η = clamp(factor·lr, 0, 1)")
        parser.add_argument("--sfw-momentum", type=float, default=d.momentum)
        parser.add_argument("--sfw-momentum-style", choices=MOMENTUM_STYLES,
                            default=d.momentum_style)
        parser.add_argument("--sfw-include-linear", action="store_true",
                            help="structured constraint on Linear weights too")
        parser.add_argument("--sfw-lmo-method", choices=LMO_METHODS, default=d.lmo_method,
                            help="top-K SVD of the spectral LMOs")
        parser.add_argument("--sfw-lmo-steps", type=int, default=None,
                            help="power-iteration steps (default 20 nuclear, 10 top-K)")
        _add_sweep_arguments(parser, "sfw", d)

    def config_from_args(self, args: argparse.Namespace) -> SFWConfig:
        d = SFWConfig()

        def get(name: str, default: Any) -> Any:
            return getattr(args, f"sfw_{name}", default)

        return SFWConfig(
            constraint=get("constraint", d.constraint), k=get("k", d.k),
            width=get("width", d.width), rescale=get("rescale", d.rescale),
            momentum=get("momentum", d.momentum),
            momentum_style=get("momentum_style", d.momentum_style),
            include_linear=get("include_linear", d.include_linear),
            lmo_method=get("lmo_method", d.lmo_method), lmo_steps=get("lmo_steps", None),
            **_sweep_kwargs(args, "sfw", d))

    def hooks(self, cfg: SFWConfig) -> list[Hook]:
        return [SFWMonitor()]

    def make_optimizer(self, model: nn.Module, train_cfg: TrainConfig,
                       cfg: SFWConfig) -> torch.optim.Optimizer:
        """SFW over `model` (its weights are moved into the feasible region in place)."""
        if train_cfg.weight_decay > 0:
            warnings.warn(f"SFW uses no weight decay: --wd {train_cfg.weight_decay:g} is ignored "
                          "(the constraint set regularizes instead); pass --wd 0 to silence",
                          stacklevel=2)
        if train_cfg.nesterov:
            warnings.warn("SFW has no Nesterov momentum: --nesterov is ignored", stacklevel=2)
        return build_sfw(model, train_cfg.lr, cfg, seed=train_cfg.seed)

    def finalize(self, trainer: Trainer, cfg: SFWConfig) -> dict[str, Any]:
        """Feasibility check, `RUN/sfw_report.json`, and the sweep(s) into `RUN/sweep-*/`."""
        feas = feasibility(trainer.optimizer)
        ranks = rank_summary(trainer.model, cfg.sweep_scheme)
        sweeps = run_sweeps(trainer, cfg, cfg.sweep_kinds(), "sfw")
        report = {"method": "sfw", "config": self.config_to_dict(cfg), "feasibility": feas,
                  "rank_analysis": ranks, "sweeps": sweeps}
        path = Path(trainer.out_dir) / "sfw_report.json"
        if trainer.is_main:
            path.write_text(json.dumps(report, indent=2, default=str))
        return {"feasible": feas["feasible"], "max_norm_ratio": feas["max_norm_ratio"],
                "constrained_groups": feas["groups"],
                "weighted_erank_ratio": ranks["weighted_erank_ratio"], "sweeps": sweeps,
                "report": str(path)}


# ----- the nuclear-norm penalty baseline -----------------------------------------------------


@dataclass
class NuclearPenaltyConfig(SweepOptions):
    """`weight`: λ of `λ·Σ‖W.flatten(1)‖_*` over every conv (3e-4, ours); `include_linear`:
    penalize Linear weights too. Sweep options as SFW's (`--nuclear-penalty-sweep*`)."""

    weight: float = 3e-4
    include_linear: bool = False

    def __post_init__(self) -> None:
        if not (self.weight >= 0 and math.isfinite(self.weight)):
            raise ConfigError(f"--nuclear-penalty-weight must be finite and >= 0, got "
                              f"{self.weight}")
        self.check_sweep("--nuclear-penalty-sweep")
        if self.sweep == "auto":
            self.sweep = "lowrank"

    def trp_config(self) -> TRPConfig:
        """The TRP hook configuration that implements exactly this penalty."""
        return TRPConfig(nuclear_weight=self.weight, trp=False, period=1, energy=1.0,
                         include_first_conv=True, include_1x1=True,
                         include_linear=self.include_linear)


class NuclearPenaltyMethod(Method):
    """`--method nuclear-penalty`: SGD + λ·U Vᵀ per conv per step (full SVD); sweep after."""

    name = "nuclear-penalty"
    config_class = NuclearPenaltyConfig
    help = "baseline: SGD + λ·Σ‖W‖_* on every conv (full-SVD sub-gradient), then the sweep"

    def add_arguments(self, parser: Any) -> None:
        d = NuclearPenaltyConfig()
        parser.add_argument("--nuclear-penalty-weight", type=float, default=d.weight,
                            help="λ of the nuclear-norm penalty")
        parser.add_argument("--nuclear-penalty-include-linear", action="store_true")
        _add_sweep_arguments(parser, "nuclear-penalty", d)

    def config_from_args(self, args: argparse.Namespace) -> NuclearPenaltyConfig:
        d = NuclearPenaltyConfig()
        return NuclearPenaltyConfig(
            weight=getattr(args, "nuclear_penalty_weight", d.weight),
            include_linear=getattr(args, "nuclear_penalty_include_linear", False),
            **_sweep_kwargs(args, "nuclear-penalty", d))

    def hooks(self, cfg: NuclearPenaltyConfig) -> list[Hook]:
        return [TRPHook(cfg.trp_config())]

    def finalize(self, trainer: Trainer, cfg: NuclearPenaltyConfig) -> dict[str, Any]:
        kinds = {"both": ("lowrank", "filters"), "none": ()}.get(cfg.sweep, (cfg.sweep,))
        ranks = rank_summary(trainer.model, cfg.sweep_scheme)
        return {"weighted_erank_ratio": ranks["weighted_erank_ratio"], "rank_analysis": ranks,
                "sweeps": run_sweeps(trainer, cfg, kinds, "nuclear-penalty")}


METHOD = SFWMethod()
NUCLEAR_PENALTY = NuclearPenaltyMethod()
EXTRA_METHODS: tuple[Method, ...] = (NUCLEAR_PENALTY,)
"""Further methods defined here; `rankwise.methods` registers only `METHOD` per module today."""

__all__ = ["EXTRA_METHODS", "METHOD", "NUCLEAR_PENALTY", "NuclearPenaltyConfig",
           "NuclearPenaltyMethod", "SFWConfig", "SFWMethod", "SFWMonitor", "build_sfw",
           "feasibility", "parse_k", "rank_summary", "run_sweeps"]
