"""`NuclearRegularizer`: SGD + `λ · Σ ‖W.flatten(1)‖_*` by sub-gradient (the SFW paper's
nuclear-norm baseline, reference code's `Nuclear_Conv` group penalty).

Its gradient term `λ · U Vᵀ` (full SVD, every step, every conv) is TRP's "Nu" sub-gradient
`λ · U_r V_rᵀ` at energy 1.0 (r = the numerical rank, i.e. the minimum-norm sub-gradient), so
it is `TRP` with weight substitution off, energy 1.0, period 1 and every conv targeted. Use it
between backward and step: `reg.before_forward(t)` (computes the SVDs of the current weights),
backward, `reg.after_backward(t)` (adds `λ·U Vᵀ` to the gradients).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from rankwise.methods.base import CompressionMethod
from rankwise.methods.registry import register_method
from rankwise.methods.sfw import SweepOptions
from rankwise.methods.trp import TRP
from rankwise.methods.trp_config import TRPConfig
from rankwise.options import option, validate


@dataclass
class NuclearPenaltyConfig(SweepOptions):
    """`weight`: λ of `λ·Σ‖W.flatten(1)‖_*` over every conv (3e-4 = TRP's README value, ours);
    `include_linear`: penalize Linear weights too. Post-training sweep options as SFW's
    (`--nuclear-penalty-sweep*`; `auto` means the low-rank sweep)."""

    weight: float = option(3e-4, low=0.0, help="λ of the nuclear-norm penalty")
    include_linear: bool = option(False, help="penalize nn.Linear weights too")

    def __post_init__(self) -> None:
        self.sweep_ratios = tuple(float(s) for s in self.sweep_ratios)
        validate(self)
        if self.sweep == "auto":
            self.sweep = "lowrank"


def nuclear_trp_config(cfg: NuclearPenaltyConfig) -> TRPConfig:
    """The TRP configuration that implements exactly this penalty."""
    return TRPConfig(nuclear_weight=cfg.weight, trp=False, period=1, energy=1.0,
                     include_first_conv=True, include_1x1=True,
                     include_linear=cfg.include_linear)


@register_method("nuclear-penalty")
class NuclearRegularizer(CompressionMethod):
    """`NuclearRegularizer(model, weight=3e-4, include_linear=False)` (see the module)."""

    config_cls = NuclearPenaltyConfig

    def __init__(self, model: nn.Module, config: NuclearPenaltyConfig | None = None,
                 **options: Any) -> None:
        base = config if config is not None else NuclearPenaltyConfig()
        self.cfg = dataclasses.replace(base, **options) if options else base
        self.model = model
        self.trp = TRP(model, nuclear_trp_config(self.cfg))

    def before_forward(self, step: int) -> None:
        self.trp.before_forward(step)

    def after_backward(self, step: int) -> None:
        self.trp.after_backward(step)

    def state_dict(self) -> dict[str, Any]:
        return self.trp.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trp.load_state_dict(state)


__all__ = ["NuclearPenaltyConfig", "NuclearRegularizer", "nuclear_trp_config"]
