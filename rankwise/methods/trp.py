"""TRP — Trained Rank Pruning (Xu et al., IJCAI 2020; arXiv 2004.14566 / 1812.02402).

`TRP(model, ...)` is the loop-agnostic method object (life cycle in `rankwise.methods.base`).
Per optimizer step `t`, as in the reference code `cifar-TRP.py`:

1. `before_forward(t)`, if `t % m == 0`: for every target, truncated SVD of its matricization at
   the energy rank `r = energy_rank(σ, e)` (on σ², or σ with `energy_on="sigma"`); with `trp`,
   `W ← U_r Σ_r V_rᵀ` in place; keep `S = U_r V_rᵀ`. SVDs are batched: one
   `torch.linalg.svd` per group of targets with the same matricized shape, on their device.
2. forward / backward on the (possibly replaced) weights (any number of micro-batches);
3. `after_backward(t)`, if `λ > 0` and `t % m == 0`: `grad += λ·S`, once per step;
4. the optimizer steps the full-size weights.

`finalize(model)` decomposes the targets (`ValueThreshold(0.05)` unless `decompose_rank`) and
returns `(factorized copy, report)` (`rankwise.methods.trp_report`). Difference from the code:
the code tests the per-epoch batch index (`batch_idx % m`); we follow the paper (`t = z·m` over
global iterations); both agree when `m` divides the batches per epoch (always for `m = 1`).
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rankwise.errors import ConfigError
from rankwise.linalg.grouped import matricize_groups, unmatricize_groups
from rankwise.methods.base import CompressionMethod
from rankwise.methods.registry import register_method
from rankwise.methods.trp_config import TRPConfig
from rankwise.methods.trp_ops import trp_project
from rankwise.methods.trp_report import trp_decompose
from rankwise.methods.trp_targets import require_targets


def _first_row(v: Any) -> Any:
    """A copy of the first sample of a batched tensor (not a view: the batch is not kept)."""
    return v[:1].detach().clone() if isinstance(v, torch.Tensor) and v.dim() else v


def _shape_recorder(method: TRP) -> Any:
    """A forward pre-hook (a plain function: deep copies of the model share it) that records
    the first forward's inputs, one sample of each (`method.example_inputs`, positional and keyword:
    image tensors or a tokenizer's ids) and an image input's (C, H, W) (`method.input_shape`),
    then removes itself."""
    ref = weakref.ref(method)

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        owner = ref()
        if owner is None:
            return
        if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            owner.input_shape = tuple(int(s) for s in args[0].shape[1:])
        owner.example_inputs = (tuple(_first_row(a) for a in args),
                         {k: _first_row(v) for k, v in kwargs.items()})
        owner._shape_hook.remove()

    return hook


@dataclass
class _Batch:
    """Targets whose matricizations stack: same (groups, p, q), dtype and device."""

    names: list[str]
    params: list[nn.Parameter]
    groups: int  # conv groups (what `matricize_groups` splits by)
    rows: int  # matrices per target (groups, or n filters for "nd")
    ranks: torch.Tensor | None = None  # (len(names),) int64 on the device, last TRP step


@register_method("trp")
class TRP(CompressionMethod):
    """Trained Rank Pruning on `model`'s targets: `TRP(model, energy=0.9, nuclear_weight=3e-4)`.

    Options are the fields of `TRPConfig` (keywords, or `config=`); `input_shape` (C, H, W)
    is what `finalize` counts MACs on (default: recorded at the first forward). State
    (`state_dict`): TRP steps done, the last TRP step and the last energy rank per layer; the
    rule depends only on the weights and the step: a resumed loop repeats an uninterrupted one.
    """

    config_cls = TRPConfig

    def __init__(self, model: nn.Module, config: TRPConfig | None = None, *,
                 input_shape: tuple[int, ...] | None = None, **options: Any) -> None:
        base = config if config is not None else TRPConfig()
        self.cfg = dataclasses.replace(base, **options) if options else base
        self.model = model
        self.trp_steps = 0
        self.last_step = -1
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.example_inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self._ranks: dict[str, int] = {}
        self._subs: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._sub_step = -1
        self._applied_step = -1
        self.targets = require_targets(model, self.cfg)
        self.batches = self._group(model)
        self._shape_hook = None if self.input_shape is not None else \
            model.register_forward_pre_hook(_shape_recorder(self), with_kwargs=True)

    @property
    def active(self) -> bool:
        return self.cfg.trp or self.cfg.nuclear_weight > 0

    def _group(self, model: nn.Module) -> list[_Batch]:
        seen: set[int] = set()
        batches: dict[tuple[Any, ...], _Batch] = {}
        for name in self.targets:
            mod = model.get_submodule(name)
            w = mod.weight
            if id(w) in seen:  # a shared weight is cut once
                continue
            seen.add(id(w))
            g = int(getattr(mod, "groups", 1))
            rows, p, q = matricize_groups(w.detach(), self.cfg.scheme, g).shape
            key = (g, rows, p, q, w.dtype, w.device)
            batches.setdefault(key, _Batch([], [], g, rows)).names.append(name)
            batches[key].params.append(w)
        return list(batches.values())

    @torch.no_grad()
    def project(self, step: int) -> None:
        """One TRP step: batched SVDs, `W ← U_r Σ_r V_rᵀ` if `trp`, keep `S = U_r V_rᵀ` if λ > 0."""
        cfg = self.cfg
        power = 2 if cfg.energy_on == "sigma2" else 1
        self._subs = []
        for b in self.batches:
            mats = torch.cat([matricize_groups(p, cfg.scheme, b.groups) for p in b.params])
            low, sub, ranks = trp_project(mats, cfg.energy, approx=cfg.trp,
                                          subgrad=cfg.nuclear_weight > 0, power=power)
            for i, p in enumerate(b.params):
                rows = slice(i * b.rows, (i + 1) * b.rows)
                if low is not None:
                    p.copy_(unmatricize_groups(low[rows], cfg.scheme, p.shape))
                if sub is not None:
                    self._subs.append((p, unmatricize_groups(sub[rows], cfg.scheme, p.shape)))
            b.ranks = ranks.view(len(b.params), b.rows).amax(dim=1)
        self._sub_step = step
        self.trp_steps += 1
        self.last_step = step

    @property
    def last_ranks(self) -> dict[str, int]:
        """Energy rank (max over groups/filters) of each target at the last TRP step."""
        for b in self.batches:
            if b.ranks is not None:
                self._ranks.update(zip(b.names, (int(r) for r in b.ranks.tolist()), strict=True))
                b.ranks = None
        return dict(self._ranks)

    # ----- life cycle --------------------------------------------------------------------
    def before_forward(self, step: int) -> None:
        """TRP step if `step % period == 0` (once per step, whatever the micro-batches)."""
        if self.active and step % self.cfg.period == 0 and self._sub_step != step:
            self.project(step)

    def after_backward(self, step: int) -> None:
        """`grad += λ·S` of this step's TRP step (once per step; after `unscale_` under AMP)."""
        if (self.cfg.nuclear_weight <= 0 or step % self.cfg.period or self._sub_step != step
                or self._applied_step == step):
            return
        for p, s in self._subs:
            if p.grad is not None:
                p.grad.add_(s, alpha=self.cfg.nuclear_weight)
        self._applied_step = step
        self._subs = []

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {f"trp_rank/{n}": r for n, r in self.last_ranks.items()}
        out["trp_steps"] = self.trp_steps
        return out

    def finalize(self, model: nn.Module | None = None, *,
                 input_shape: tuple[int, ...] | None = None,
                 example_inputs: Any = None) -> tuple[nn.Module, dict[str, Any]]:
        """`(factorized copy of model, report)`. MACs are counted on zeros of `input_shape`
        (C, H, W), else on `example_inputs` (as `decompose` takes them), else on the inputs of
        the first forward (one sample; keyword inputs such as token ids included)."""
        shape, example = self.counting_inputs(input_shape, example_inputs)
        if shape is None and example is None:
            raise ConfigError("TRP.finalize: no forward was seen; pass input_shape=(C, H, W) "
                              "or example_inputs= (e.g. a tokenizer's output)")
        return trp_decompose(model if model is not None else self.model, self.cfg, shape,
                             self.last_ranks, example=example)

    def state_dict(self) -> dict[str, Any]:
        return {"trp_steps": self.trp_steps, "last_step": self.last_step,
                "last_ranks": self.last_ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trp_steps = int(state.get("trp_steps", 0))
        self.last_step = int(state.get("last_step", -1))
        self._ranks = {str(k): int(v) for k, v in dict(state.get("last_ranks", {})).items()}


__all__ = ["TRP", "TRPConfig"]
