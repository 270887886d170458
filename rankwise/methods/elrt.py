"""ELRT — low-rank training from scratch (Sui, Yin, Gong, Xiao, Phan, Yuan; arXiv 2401.10341).

The network is built directly in factorized form: the dense architecture's Conv2d/Linear *specs*
(not weights) are walked and every targeted layer becomes `FORMATS[fmt].from_spec(spec, rank)`
with the variance-matching init of `rankwise.layers.init`; the full-size weight is never
trained, and never allocated when the base model lives on the `meta` device (`build_model`, or
`rankwise train`, which may build on meta for methods with `builds_on_meta`). During training a
soft orthogonality penalty `λ·Σ ‖UᵀU − I‖_F²` on the factors' bases (`methods.regularizers`) is
added to the loss (`OrthogonalityHook`). `finalize` saves the factorized model with
`rankwise.io.save` and writes `elrt_report.json`.

Paper facts used (via docs/methods.md; the stored paper text we could reach holds only the
abstract and the start of the introduction): Tucker-2 is the chosen format, orthogonality the
performance strategy. Everything else is **our default, unverified**: λ = 1e-3 (keeps the
factors near-orthonormal against weight decay 1e-4: the fixed point of
wd·U + 4λ·U(UᵀU − I) has ‖u‖² = 1 − wd/(4λ) ≈ 0.975), ranks `ratio:0.25`, Kaiming fan_in/relu
variance matching, first conv and classifier kept dense.

Rank policies: `Fixed`/`Ratio` are applied per layer; `ParamsBudget`/`MacsBudget` are resolved
either as one rank fraction for all layers found by bisection ("uniform", default) or with
`rank.allocate_budget` on flat spectra ("greedy"). Energy-type policies read a trained weight's
spectrum, which does not exist here: `ConfigError`. `rank_multiple=8` rounds ranks down to
multiples of 8, which oneDNN's CPU conv kernels ran markedly faster in our measurement.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rankwise.methods.base import Method
from rankwise.methods.elrt_build import (  # the model building; re-exported
    CONV_FORMATS,
    LINEAR_FORMATS,
    REPORT,
    ELRTConfig,
    build_factorized,
    build_model,
    elrt_summary,
    resolve_policy,
)
from rankwise.methods.elrt_build import round_rank as round_rank
from rankwise.methods.regularizers import orthogonality_penalty
from rankwise.train.hooks import Hook

if TYPE_CHECKING:
    from rankwise.train import Trainer


class OrthogonalityHook(Hook):
    """Adds `weight·orthogonality_penalty(model)` to the loss; logs the penalty every
    `log_every` steps (default: the trainer's) as `{"event": "elrt", "orth_penalty"}` rows and
    as `orth_penalty` in each epoch's metrics. `weight = 0` only logs."""

    def __init__(self, weight: float, log_every: int | None = None) -> None:
        self.weight = float(weight)
        self.log_every = log_every
        self.last: float | None = None
        self._last_t: torch.Tensor | None = None

    def extra_loss(self, trainer: Trainer, model: nn.Module) -> torch.Tensor | None:
        if self.weight == 0.0:
            return None
        pen = orthogonality_penalty(model)
        self._last_t = pen.detach()
        return self.weight * pen

    def after_step(self, trainer: Trainer, step: int) -> None:
        every = self.log_every or getattr(getattr(trainer, "cfg", None), "log_every", 50)
        if (step + 1) % every:
            return
        value = self._value(trainer)
        logger = getattr(trainer, "logger", None)
        if logger is not None:
            logger.log({"event": "elrt", "step": step + 1, "orth_penalty": value,
                        "orth_loss": self.weight * value}, step + 1)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        with torch.no_grad():
            metrics["orth_penalty"] = float(orthogonality_penalty(trainer.model))
        self.last = metrics["orth_penalty"]

    def _value(self, trainer: Trainer) -> float:
        if self._last_t is None:
            with torch.no_grad():
                self._last_t = orthogonality_penalty(trainer.model)
        self.last = float(self._last_t)
        self._last_t = None
        return self.last

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last = state.get("last")


class ELRTMethod(Method):
    """`--method elrt`: train the factorized model from scratch with the orthogonality penalty."""

    name = "elrt"
    config_class = ELRTConfig
    help = "ELRT: train a Tucker-2 (or other format) factorized model from scratch"
    builds_on_meta = True  # the caller may build the base model under torch.device("meta")

    def add_arguments(self, parser: argparse.ArgumentParser | Any) -> None:
        """`--elrt-<field>` flags; unset flags keep the `ELRTConfig` defaults."""
        keep = argparse.SUPPRESS
        flags: list[tuple[str, dict[str, Any]]] = [
            ("format", {"choices": CONV_FORMATS + LINEAR_FORMATS,
                        "help": "factorized format of the convs (default tucker2)"}),
            ("rank", {"help": "fixed:R | ratio:F | budget:params=X | budget:macs=X "
                              "(default ratio:0.25)"}),
            ("orth-weight", {"type": float, "help": "λ of the orthogonality penalty (1e-3)"}),
            ("linear-format", {"choices": LINEAR_FORMATS + ("none",), "help": "default svd"}),
            ("skip-first-conv", {"action": argparse.BooleanOptionalAction,
                                 "help": "keep the first conv dense (default yes)"}),
            ("skip-classifier", {"action": argparse.BooleanOptionalAction,
                                 "help": "keep the classifier dense (default yes)"}),
            ("include", {"help": "comma-separated layer globs to factorize"}),
            ("exclude", {"help": "comma-separated layer globs to keep dense"}),
            ("init-mode", {"choices": ("fan_in", "fan_out"), "help": "default fan_in"}),
            ("init-dist", {"choices": ("normal", "uniform"), "help": "default normal"}),
            ("budget-allocation", {"choices": ("uniform", "greedy"),
                                   "help": "budgets: one rank fraction for all layers "
                                           "(uniform, default) or allocate_budget on flat "
                                           "spectra (greedy)"}),
            ("rank-multiple", {"type": int, "help": "round ranks down to multiples of this "
                                                    "(e.g. 8 for fast kernels; default 1)"}),
            ("seed", {"type": int, "help": "seed of the factor init (default: global RNG)"}),
        ]
        for name, kw in flags:
            parser.add_argument(f"--elrt-{name}", default=keep, **kw)

    def config_from_args(self, args: argparse.Namespace) -> ELRTConfig:
        def get(*names: str) -> Any:
            for n in names:
                v = getattr(args, n, None)
                if v is not None:
                    return v
            return None

        kw: dict[str, Any] = {}
        for key, names in (("format", ("elrt_format",)), ("rank", ("elrt_rank", "rank")),
                           ("orth_weight", ("elrt_orth_weight", "orth_weight")),
                           ("linear_format", ("elrt_linear_format",)),
                           ("skip_first_conv", ("elrt_skip_first_conv",)),
                           ("skip_classifier", ("elrt_skip_classifier",)),
                           ("init_mode", ("elrt_init_mode",)),
                           ("init_distribution", ("elrt_init_dist",)), ("seed", ("elrt_seed",)),
                           ("budget_allocation", ("elrt_budget_allocation",)),
                           ("rank_multiple", ("elrt_rank_multiple",))):
            v = get(*names)
            if v is not None:
                kw[key] = v
        for key in ("include", "exclude"):
            v = get(f"elrt_{key}")
            if v:
                kw[key] = tuple(s.strip() for s in str(v).split(",") if s.strip())
        return ELRTConfig(**kw)

    def prepare_model(self, model: nn.Module, cfg: ELRTConfig,
                      input_shape: tuple[int, ...]) -> nn.Module:
        model, report = build_factorized(model, cfg, tuple(input_shape))
        model.elrt_build_report = report.to_dict()  # plain attribute, read by finalize
        return model

    def hooks(self, cfg: ELRTConfig) -> list[Hook]:
        return [OrthogonalityHook(cfg.orth_weight, cfg.log_every)]

    def finalize(self, trainer: Trainer, cfg: ELRTConfig) -> dict[str, Any]:
        """Evaluate, save the factorized model (`trainer.save_model` → `rankwise.io.save`) and
        write `elrt_report.json` into the run directory; return the headline numbers."""
        from rankwise.train import evaluate

        model = trainer.model
        shape = tuple(trainer.meta.get("input_shape") or (3, 32, 32))
        summary = elrt_summary(model, shape)
        final: dict[str, float] = {}
        if trainer.test_data is not None:
            r = evaluate(model, trainer.test_data, trainer.cfg.eval_batch_size, trainer.device)
            final = {"test_loss": float(r["loss"]), "test_acc": float(r["acc"])}
        with torch.no_grad():
            penalty = float(orthogonality_penalty(model))
        build = getattr(model, "elrt_build_report", None)
        report = {"method": "elrt", "format": cfg.format, "rank": cfg.rank,
                  "orth_weight": cfg.orth_weight, "orth_penalty": penalty, **final, **summary,
                  "kept_dense": [r for r in (build or {}).get("rows", []) if r["format"] is None],
                  "config": self.config_to_dict(cfg)}
        headline = {k: report.get(k) for k in ("format", "params", "dense_params", "params_ratio",
                                               "macs", "dense_macs", "macs_ratio", "test_acc",
                                               "orth_penalty")}
        if trainer.is_main:
            trainer.save_model(extra_meta={"final_metrics": final, "elrt": headline})
            (trainer.out_dir / REPORT).write_text(json.dumps(report, indent=2, default=str))
        return {**headline, "report": str(trainer.out_dir / REPORT)}


METHOD = ELRTMethod()

__all__ = ["METHOD", "ELRTConfig", "ELRTMethod", "OrthogonalityHook", "build_factorized",
           "build_model", "elrt_summary", "resolve_policy"]
