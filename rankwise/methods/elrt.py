"""ELRT — low-rank training from scratch (Sui, Yin, Gong, Xiao, Phan, Yuan; arXiv 2401.10341).

The network is built directly in factorized form: the dense architecture's Conv2d/Linear *specs*
(not weights) are walked and every targeted layer becomes `FORMATS[fmt].from_spec(spec, rank)`
with the variance-matching init of `rankwise.layers.init`; the full-size weight is never
trained, and never allocated when the base model lives on the `meta` device
(`ELRT.build("resnet20", ...)`, or `rankwise train`, which builds on meta for recipes with
`builds_on_meta`). During training the soft orthogonality penalty `λ·Σ ‖UᵀU − I‖_F²` on the
factors' bases (`methods.regularizers`) is added to the loss (`ELRT.penalty()`).

Loop-agnostic use:

    elrt = rankwise.ELRT.build("resnet20", rank="budget:params=0.3", input_shape=(3, 32, 32))
    model = elrt.model                    # train it in any loop; per step:
    loss = loss + elrt.penalty()          # or elrt.add_penalty_grad() after backward
    model, report = elrt.finalize()       # the model is already factorized: report only

Paper facts used (via docs/methods.md): Tucker-2 is the chosen format, orthogonality the
performance strategy. Everything else is **our default, unverified**: λ = 1e-3 (keeps the
factors near-orthonormal against weight decay 1e-4: the fixed point of
wd·U + 4λ·U(UᵀU − I) has ‖u‖² = 1 − wd/(4λ) ≈ 0.975), ranks `ratio:0.25`, Kaiming fan_in/relu
variance matching, first conv and classifier kept dense. Rank policies: see `elrt_build`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from rankwise.errors import ConfigError
from rankwise.methods.base import CompressionMethod
from rankwise.methods.elrt_build import (  # the model building; re-exported
    build_factorized,
    build_model,
    elrt_summary,
)
from rankwise.methods.elrt_build import round_rank as round_rank
from rankwise.methods.elrt_config import (
    CONV_FORMATS,
    LINEAR_FORMATS,
    REPORT,
    ELRTConfig,
    resolve_policy,
)
from rankwise.methods.registry import register_method
from rankwise.methods.regularizers import orthogonality_penalty
from rankwise.options import to_dict


@register_method("elrt")
class ELRT(CompressionMethod):
    """ELRT on an already factorized `model` (use `ELRT.build` to factorize a dense one).

    `penalty()` is `orth_weight · Σ ‖UᵀU − I‖_F²` (None when the weight is 0); `last_penalty`
    holds the value of the last call. State: `last_penalty`.
    """

    config_cls = ELRTConfig

    def __init__(self, model: nn.Module, config: ELRTConfig | None = None,
                 **options: Any) -> None:
        base = config if config is not None else ELRTConfig()
        self.cfg = dataclasses.replace(base, **options) if options else base
        self.model = model
        self.input_shape: tuple[int, ...] | None = None
        self.example_inputs: Any = None  # what a token model was traced on (`build`)
        self.build_report: dict[str, Any] | None = None
        self.last_penalty: float | None = None

    @classmethod
    def build(cls, model_or_name: nn.Module | str, config: ELRTConfig | None = None, *,
              input_shape: tuple[int, ...] | None = None, device: Any = None,
              model_kwargs: dict[str, Any] | None = None, example_inputs: Any = None,
              **options: Any) -> ELRT:
        """Factorize a dense model (its weights are ignored; a `meta` model never allocates
        them) or a zoo name (`create_model(name, **model_kwargs)` on meta) → `ELRT`. A module
        is traced on zeros of `input_shape` (C, H, W) or on `example_inputs` (as `decompose`
        takes them: a tokenizer's output for a token model)."""
        base = config if config is not None else ELRTConfig()
        cfg = dataclasses.replace(base, **options) if options else base
        if isinstance(model_or_name, str):
            model, report = build_model(model_or_name, cfg, input_shape, device=device,
                                        **(model_kwargs or {}))
            if input_shape is None:
                from rankwise.models import default_input_shape

                input_shape = tuple(default_input_shape(model_or_name))
        else:
            if input_shape is None and example_inputs is None:
                raise ConfigError("ELRT.build: pass input_shape=(C, H, W) or example_inputs= "
                                  "(e.g. a tokenizer's output) for a module")
            model, report = build_factorized(model_or_name, cfg, input_shape, device=device,
                                             example=example_inputs)
        out = cls(model, cfg)
        out.input_shape = None if input_shape is None else tuple(input_shape)
        out.example_inputs = example_inputs
        out.build_report = report.to_dict()
        return out

    def penalty(self) -> torch.Tensor | None:
        if self.cfg.orth_weight == 0.0:
            return None
        pen = orthogonality_penalty(self.model)
        self.last_penalty = float(pen.detach())
        return self.cfg.orth_weight * pen

    def metrics(self) -> dict[str, float]:
        with torch.no_grad():
            return {"orth_penalty": float(orthogonality_penalty(self.model))}

    def finalize(self, model: nn.Module | None = None, *,
                 input_shape: tuple[int, ...] | None = None,
                 example_inputs: Any = None) -> tuple[nn.Module, dict[str, Any]]:
        """`(model, report)`: params/MACs vs the dense counterpart, the penalty, the config
        (counted on `example_inputs` or zeros of `input_shape`, default: what `build` had)."""
        model = model if model is not None else self.model
        shape, example = self.counting_inputs(input_shape, example_inputs)
        if shape is None and example is None:
            raise ConfigError("ELRT.finalize: pass input_shape=(C, H, W) or example_inputs=")
        with torch.no_grad():
            penalty = float(orthogonality_penalty(model))
        report = {"method": "elrt", "format": self.cfg.format, "rank": self.cfg.rank,
                  "orth_weight": self.cfg.orth_weight, "orth_penalty": penalty,
                  **elrt_summary(model, shape, example),
                  "kept_dense": [r for r in (self.build_report or {}).get("rows", [])
                                 if r["format"] is None],
                  "config": to_dict(self.cfg)}
        return model, report

    def state_dict(self) -> dict[str, Any]:
        return {"last_penalty": self.last_penalty}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_penalty = state.get("last_penalty")


__all__ = ["CONV_FORMATS", "ELRT", "LINEAR_FORMATS", "REPORT", "ELRTConfig", "build_factorized",
           "build_model", "elrt_summary", "resolve_policy"]
