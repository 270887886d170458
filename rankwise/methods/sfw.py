"""SFW — compression-aware training with Stochastic Frank-Wolfe (Zimmer, Spiegel, Pokutta;
arXiv 2205.11921): the options, the optimizer's set-up and the post-training functions.

SFW is already loop-agnostic: `rankwise.SFW` is a `torch.optim.Optimizer`. `build_sfw(model,
lr, SFWConfig(...))` makes one param group per parameter (`make_param_groups`: structured
settings put the chosen set on every Conv2d weight and an L2 ball on everything else), radii
`D = 2 · width · E‖W_init‖_F`, and shifts the initialization into the feasible region; any loop
then calls `opt.step()` (no weight decay; an lr schedule acts on every group's `lr`). After
training, `sfw_finalize(model, opt, cfg, test_data)` checks feasibility and runs the
compression sweep (`rankwise.compress.sweep`, no retraining); `sfw_sweep` runs the sweep alone.

`SweepOptions` (the post-training sweep's flags) is shared with the nuclear-norm penalty
baseline (`rankwise.methods.nuclear`).
Defaults not from the paper (ours): the sweep ratios.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rankwise.compress.sweep import (
    DEFAULT_RATIOS,
    SCHEMES,
    filter_sweep,
    lowrank_sweep,
)
from rankwise.errors import ConfigError
from rankwise.optim import CONSTRAINTS, SFW, make_param_groups, shift_model_to_feasible
from rankwise.optim.sfw import MOMENTUM_STYLES
from rankwise.options import option, to_dict, validate

SFW_CONSTRAINTS = tuple(c for c in CONSTRAINTS if c != "unconstrained")
RESCALE_CHOICES = ("gradient", "diameter", "fast_gradient", "none")
SWEEPS = ("auto", "lowrank", "filters", "both", "none")
LMO_METHODS = ("auto", "exact", "power", "lowrank")
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
    """What the post-training sweep does (flags `--<method>-sweep*`)."""

    sweep: str = option("auto", choices=SWEEPS,
                        help="post-training sweep without retraining (auto: filters for "
                             "group-k-support, low-rank otherwise)")
    sweep_ratios: tuple[float, ...] = option(DEFAULT_RATIOS, low=0.0, high=1.0, high_open=True,
                                             help="fractions of rank/filters removed")
    sweep_scheme: str = option("channel", choices=SCHEMES,
                               help="conv matricization of the low-rank sweep")

    def sweep_kinds(self) -> tuple[str, ...]:
        if self.sweep == "auto":
            auto = getattr(self, "constraint", None) == "group-k-support"
            return ("filters",) if auto else ("lowrank",)
        return {"both": ("lowrank", "filters"), "none": ()}.get(self.sweep, (self.sweep,))


@dataclass
class SFWConfig(SweepOptions):
    """SFW options (flags `--sfw-<field>`); defaults of the reference's example config."""

    constraint: str = option("spectral-k-support", choices=SFW_CONSTRAINTS,
                             help="constraint set (structured ones act on conv weights)")
    k: int | float = option(0.3, parse=parse_k,
                            help="K: int count or float fraction of max rank/filters/entries")
    width: float = option(10.0, low=0.0, low_open=True,
                          help="radius factor: D = 2·width·E‖W_init‖_F")
    rescale: str = option("gradient", choices=RESCALE_CHOICES,
                          help="step-size rule η = clamp(factor·lr, 0, 1)")
    momentum: float = option(0.9, low=0.0, high=1.0, high_open=True, help="SFW momentum")
    momentum_style: str = option("heavy_ball", choices=MOMENTUM_STYLES,
                                 help="heavy_ball (compression-aware-SFW) or ema")
    include_linear: bool = option(False, help="structured constraint on Linear weights too")
    lmo_method: str = option("auto", choices=LMO_METHODS,
                             help="top-K SVD of the spectral LMOs; auto: exact (SVD on the tall "
                                  "side) for top-K sets, power iteration for the nuclear ball on "
                                  "matrices wider than 64 (measured faster on CPU)")
    lmo_steps: int | None = option(None, low=1,
                                   help="power-iteration steps (None: 20 nuclear, 10 top-K)")

    def __post_init__(self) -> None:
        self.k = parse_k(self.k)
        self.sweep_ratios = tuple(float(s) for s in self.sweep_ratios)
        validate(self)
        k = self.k
        if not (isinstance(k, float) and 0 < k <= 1 or isinstance(k, int) and k >= 1):
            raise ConfigError(f"SFWConfig.k must be an int >= 1 or a fraction in (0, 1], got "
                              f"{k!r} (--sfw-k)")


def build_sfw(model: nn.Module, lr: float, cfg: SFWConfig | None = None, seed: int = 0) -> SFW:
    """Param groups of `cfg`, the model's weights shifted into them (in place), and the SFW."""
    cfg = cfg if cfg is not None else SFWConfig()
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


def rank_summary(model: nn.Module, scheme: str = "channel") -> dict[str, float]:
    """Model-level effective-rank numbers (`rankwise.analysis.summarize`) of conv/linear layers."""
    from rankwise.analysis.layer_ranks import analyze_model, summarize

    return summarize(analyze_model(model, scheme))


def sfw_sweep(model: nn.Module, test_data: Any, opts: SweepOptions,
              kinds: tuple[str, ...] | None = None, *, input_shape: tuple[int, ...] | None = None,
              example_inputs: Any = None, evaluate_fn: Any = None, batch_size: int = 512,
              device: Any = "cpu") -> dict[str, list[dict[str, Any]]]:
    """The compression sweeps `kinds` (default `opts.sweep_kinds()`) of `model` on `test_data`,
    no retraining: `{kind: rows}` (`rankwise.compress.sweep` rows: ratio, acc, ...).

    Image models give `input_shape` (C, H, W); others `example_inputs` (one batch as the model
    takes it, e.g. a tokenizer's output) and `evaluate_fn(model) -> {"acc", ...}` in place of
    `test_data`. With `opts.include_linear` the low-rank sweep truncates linears too."""
    if input_shape is None and example_inputs is None:
        raise ConfigError("sfw_sweep: pass input_shape=(C, H, W), or example_inputs= (one "
                          "batch as the model takes it) for a model without image inputs")
    if test_data is None and evaluate_fn is None:
        raise ConfigError("sfw_sweep: pass test_data (an image dataset) or evaluate_fn=")
    kinds = opts.sweep_kinds() if kinds is None else kinds
    common = dict(input_shape=None if input_shape is None else tuple(input_shape),
                  example_inputs=example_inputs, evaluate_fn=evaluate_fn,
                  batch_size=batch_size, device=device)
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in kinds:
        if kind == "lowrank":
            out[kind] = lowrank_sweep(model, test_data, opts.sweep_ratios,
                                      scheme=opts.sweep_scheme,
                                      include_linear=getattr(opts, "include_linear", False),
                                      **common)
        else:
            out[kind] = filter_sweep(model, test_data, opts.sweep_ratios, **common)
    return out


def sfw_finalize(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: SFWConfig,
                 test_data: Any = None, *, input_shape: tuple[int, ...] | None = None,
                 example_inputs: Any = None, evaluate_fn: Any = None, batch_size: int = 512,
                 device: Any = "cpu") -> dict[str, Any]:
    """After SFW training: feasibility, rank analysis and (with `test_data` or `evaluate_fn`)
    the sweeps (`sfw_sweep`: `input_shape` for image models, else `example_inputs`).

    Returns `{"method", "config", "feasibility", "rank_analysis", "sweeps": {kind: rows}}`;
    SFW needs no conversion (compress with the sweep's ratio of choice).
    """
    sweeps: dict[str, Any] = {}
    if test_data is not None or evaluate_fn is not None:
        sweeps = sfw_sweep(model, test_data, cfg, input_shape=input_shape,
                           example_inputs=example_inputs, evaluate_fn=evaluate_fn,
                           batch_size=batch_size, device=device)
    return {"method": "sfw", "config": to_dict(cfg), "feasibility": feasibility(optimizer),
            "rank_analysis": rank_summary(model, cfg.sweep_scheme), "sweeps": sweeps}


__all__ = ["SFW", "SFWConfig", "SweepOptions", "build_sfw",
           "feasibility", "parse_k", "rank_summary", "sfw_finalize", "sfw_sweep"]
