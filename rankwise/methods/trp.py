"""TRP — Trained Rank Pruning (Xu et al., IJCAI 2020; arXiv 2004.14566 / 1812.02402) as a method.

Per iteration `t` (the trainer's global step), as in the reference code `cifar-TRP.py`:

1. if `t % m == 0`: for every target, truncated SVD of its matricization at the energy rank
   `r = energy_rank(σ, e)`; with `trp`, `W ← U_r Σ_r V_rᵀ` in place before the forward; keep
   `S = U_r V_rᵀ` (`on_batch_start`). SVDs are batched: one `torch.linalg.svd` per group of
   targets with the same matricized shape, on the training device.
2. forward / backward on the (possibly replaced) weights;
3. if `λ > 0` and `t % m == 0`: `grad += λ·S` (`after_backward`);
4. the optimizer steps the full-size weights (plain SGD between TRP steps).

After training, `finalize` decomposes the targets with `ValueThreshold(0.05)` (no fine-tuning
unless `retrain > 0`), saves the factorized model to `RUN/factorized/` and writes
`RUN/trp_report.json` + `RUN/trp_report.md`. Difference from the code: the code tests the
per-epoch batch index (`batch_idx % m`); we follow the paper (`t = z·m` over global iterations);
both agree when `m` divides the number of batches per epoch (always for the default `m = 1`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rankwise.errors import ConfigError
from rankwise.methods.base import Method
from rankwise.methods.trp_ops import (
    SCHEMES,
    matricize_weight,
    trp_flops,
    trp_project,
    unmatricize_weight,
)
from rankwise.train.hooks import Hook

if TYPE_CHECKING:
    from rankwise.train import Trainer

COUNTINGS = ("rankwise", "trp")


@dataclass
class TRPConfig:
    """TRP options; defaults and where they come from.

    - `scheme`: matricization, "channel" (TRP "NC", `(n, c·kh·kw)`) or "spatial" (TRP "VH").
    - `energy = 0.9`: fraction of Σσ² kept by the in-training truncation (hard-coded, code).
    - `period = 1`: TRP step every m iterations (code default `--decouple-period`).
    - `nuclear_weight = 3e-4`: λ of the nuclear sub-gradient (README command); 0 disables.
    - `trp = True`: substitute the truncated weights; False with λ > 0 is the paper's "Nu" alone.
    - `value_threshold = 0.05`: post-training decomposition keeps σ ≥ t (code, NC/VH).
    - `decompose_rank`: another post-training policy string instead (e.g. "energy:0.85", the
      code's ND setting); None uses `value_threshold`.
    - `retrain = 0`: fine-tuning epochs of the factorized model (code's `--retrain`: 4);
      `retrain_lr` None = the training lr, constant (as the code).
    - targets: every `nn.Conv2d` whose kernel is not 1×1, except the first conv (code);
      `include_first_conv` / `include_1x1` / `include_linear` widen it; `targets` (glob/regex
      patterns of module names) replaces the automatic rule.
    - `counting`: headline cost in the summary: "rankwise" (all params, MACs per sample incl.
      FC) or "trp" (FLOPs per output pixel × pixels, convs only, FC excluded, as the code).
    """

    scheme: str = "channel"
    energy: float = 0.9
    period: int = 1
    nuclear_weight: float = 3e-4
    trp: bool = True
    value_threshold: float = 0.05
    decompose_rank: str | None = None
    retrain: int = 0
    retrain_lr: float | None = None
    targets: tuple[str, ...] = ()
    include_first_conv: bool = False
    include_1x1: bool = False
    include_linear: bool = False
    counting: str = "rankwise"

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        checks = [
            (self.scheme in SCHEMES, f"scheme must be one of {SCHEMES}, got {self.scheme!r}"),
            (0.0 < self.energy <= 1.0, f"energy must be in (0, 1], got {self.energy}"),
            (isinstance(self.period, int) and self.period >= 1,
             f"period must be an int >= 1, got {self.period!r}"),
            (self.nuclear_weight >= 0 and math.isfinite(self.nuclear_weight),
             f"nuclear_weight must be finite and >= 0 (0 disables), got {self.nuclear_weight}"),
            (self.value_threshold >= 0 and math.isfinite(self.value_threshold),
             f"value_threshold must be finite and >= 0, got {self.value_threshold}"),
            (isinstance(self.retrain, int) and self.retrain >= 0,
             f"retrain must be an int >= 0 (epochs), got {self.retrain!r}"),
            (self.retrain_lr is None or self.retrain_lr > 0,
             f"retrain_lr must be > 0 or None, got {self.retrain_lr}"),
            (self.counting in COUNTINGS, f"counting must be one of {COUNTINGS}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"TRPConfig: {msg} (--trp-* flags)")
        if self.decompose_rank is not None:
            from rankwise.surgery.rank import parse_rank

            parse_rank(self.decompose_rank)  # ConfigError on a bad string


def find_targets(model: nn.Module, cfg: TRPConfig) -> list[str]:
    """Names of the modules TRP acts on (see `TRPConfig`), in registration order."""
    from rankwise.surgery.decompose import matches

    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    first = convs[0] if convs else None
    out = []
    for name, mod in model.named_modules():
        if not name or not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        if cfg.targets:
            if matches(name, mod, list(cfg.targets)):
                out.append(name)
            continue
        if isinstance(mod, nn.Linear):
            keep = cfg.include_linear
        else:
            one = tuple(mod.kernel_size) == (1, 1)
            keep = (cfg.include_1x1 or not one) and (cfg.include_first_conv or name != first)
        if keep:
            out.append(name)
    return out


@dataclass
class _Batch:
    """Targets whose matricizations stack: same (groups, p, q), dtype and device."""

    names: list[str]
    params: list[nn.Parameter]
    groups: int
    ranks: torch.Tensor | None = None  # (len(names),) int64 on the device, last TRP step


class TRPHook(Hook):
    """The per-iteration TRP rule (module docstring) as a trainer hook.

    State (`state_dict`): TRP steps done, the last TRP step and the last energy rank per layer.
    The rule itself only depends on the weights and the trainer's `global_step`, which the
    trainer checkpoints, so a resumed run repeats exactly what an uninterrupted run does.
    """

    def __init__(self, cfg: TRPConfig) -> None:
        self.cfg = cfg
        self.batches: list[_Batch] = []
        self.targets: list[str] = []
        self.trp_steps = 0
        self.last_step = -1
        self._ranks: dict[str, int] = {}
        self._subs: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._sub_step = -1

    @property
    def active(self) -> bool:
        return self.cfg.trp or self.cfg.nuclear_weight > 0

    def attach(self, model: nn.Module) -> None:
        """Resolve the targets of `model` and group them for batched SVDs."""
        self.targets = find_targets(model, self.cfg)
        seen: set[int] = set()
        batches: dict[tuple[Any, ...], _Batch] = {}
        for name in self.targets:
            mod = model.get_submodule(name)
            w = mod.weight
            if id(w) in seen:  # a shared weight is cut once
                continue
            seen.add(id(w))
            g = int(getattr(mod, "groups", 1))
            p, q = matricize_weight(w.detach(), self.cfg.scheme, g).shape[1:]
            key = (g, p, q, w.dtype, w.device)
            batches.setdefault(key, _Batch([], [], g)).names.append(name)
            batches[key].params.append(w)
        self.batches = list(batches.values())

    @torch.no_grad()
    def project(self, step: int) -> None:
        """One TRP step: batched SVDs, `W ← U_r Σ_r V_rᵀ` if `trp`, keep `S = U_r V_rᵀ` if λ > 0."""
        cfg = self.cfg
        self._subs = []
        for b in self.batches:
            mats = torch.cat([matricize_weight(p, cfg.scheme, b.groups) for p in b.params])
            low, sub, ranks = trp_project(mats, cfg.energy, approx=cfg.trp,
                                          subgrad=cfg.nuclear_weight > 0)
            for i, p in enumerate(b.params):
                rows = slice(i * b.groups, (i + 1) * b.groups)
                if low is not None:
                    p.copy_(unmatricize_weight(low[rows], cfg.scheme, p.shape))
                if sub is not None:
                    self._subs.append((p, unmatricize_weight(sub[rows], cfg.scheme, p.shape)))
            b.ranks = ranks.view(len(b.params), b.groups).amax(dim=1)
        self._sub_step = step
        self.trp_steps += 1
        self.last_step = step

    @property
    def last_ranks(self) -> dict[str, int]:
        """Energy rank (per group for grouped convs) of each target at the last TRP step."""
        for b in self.batches:
            if b.ranks is not None:
                self._ranks.update(zip(b.names, (int(r) for r in b.ranks.tolist()), strict=True))
                b.ranks = None
        return dict(self._ranks)

    # ----- Hook API ---------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer) -> None:
        self.attach(trainer.model)

    def on_batch_start(self, trainer: Trainer, step: int) -> None:
        if self.active and step % self.cfg.period == 0:
            self.project(step)

    def after_backward(self, trainer: Trainer, step: int) -> None:
        if self.cfg.nuclear_weight <= 0 or step % self.cfg.period or self._sub_step != step:
            return
        for p, s in self._subs:
            if p.grad is not None:
                p.grad.add_(s, alpha=self.cfg.nuclear_weight)
        self._subs = []

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        ranks = self.last_ranks
        metrics.update({f"trp_rank/{name}": r for name, r in ranks.items()})
        metrics["trp_steps"] = self.trp_steps

    def state_dict(self) -> dict[str, Any]:
        return {"trp_steps": self.trp_steps, "last_step": self.last_step,
                "last_ranks": self.last_ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trp_steps = int(state.get("trp_steps", 0))
        self.last_step = int(state.get("last_step", -1))
        self._ranks = {str(k): int(v) for k, v in dict(state.get("last_ranks", {})).items()}


def _add(parser: Any, flags: tuple[str, ...], **kw: Any) -> None:
    """Add `flags`; an unprefixed alias already taken by another method is dropped."""
    try:
        parser.add_argument(*flags, **kw)
    except argparse.ArgumentError:
        parser.add_argument(flags[0], **kw)


class TRPMethod(Method):
    """`rankwise train --method trp`: TRP hook during training, decomposition + report after."""

    name = "trp"
    config_class = TRPConfig
    help = "Trained Rank Pruning (Xu et al. 2020): periodic truncation + nuclear sub-gradient"

    def add_arguments(self, parser: Any) -> None:
        d = TRPConfig()
        _add(parser, ("--trp-scheme",), choices=SCHEMES, default=d.scheme,
             help="matricization: channel (NC) or spatial (VH)")
        _add(parser, ("--trp-energy",), type=float, default=d.energy,
             help="σ² energy kept by the in-training truncation")
        _add(parser, ("--trp-period",), type=int, default=d.period,
             help="TRP step every M iterations")
        _add(parser, ("--trp-nuclear-weight", "--nuclear-weight"), dest="trp_nuclear_weight",
             type=float, default=d.nuclear_weight, help="nuclear sub-gradient weight λ; 0 disables")
        _add(parser, ("--trp-threshold",), type=float, default=d.value_threshold,
             help="post-training value threshold on σ")
        _add(parser, ("--trp-decompose-rank",), default=None,
             help="post-training rank policy instead of the threshold, e.g. energy:0.85")
        _add(parser, ("--trp-nu-only", "--no-trp"), dest="trp_nu_only", action="store_true",
             help="no weight substitution: nuclear regularization only (the paper's Nu)")
        _add(parser, ("--trp-retrain", "--retrain"), dest="trp_retrain", type=int, default=0,
             metavar="N", help="fine-tune the factorized model N epochs")
        _add(parser, ("--trp-retrain-lr",), type=float, default=None,
             help="constant lr of --trp-retrain (None: --lr)")
        _add(parser, ("--trp-targets",), nargs="+", default=[], metavar="PATTERN",
             help="module-name globs/regexes to target instead of the automatic rule")
        _add(parser, ("--trp-include-first-conv",), action="store_true")
        _add(parser, ("--trp-include-1x1",), dest="trp_include_1x1", action="store_true")
        _add(parser, ("--trp-include-linear",), action="store_true")
        _add(parser, ("--trp-counting",), choices=COUNTINGS, default=d.counting,
             help="headline cost counting: rankwise or trp (per output pixel, convs only)")

    def config_from_args(self, args: argparse.Namespace) -> TRPConfig:
        d = TRPConfig()

        def get(name: str, default: Any) -> Any:
            return getattr(args, name, default)

        return TRPConfig(
            scheme=get("trp_scheme", d.scheme), energy=get("trp_energy", d.energy),
            period=get("trp_period", d.period),
            nuclear_weight=get("trp_nuclear_weight", d.nuclear_weight),
            trp=not get("trp_nu_only", False),
            value_threshold=get("trp_threshold", d.value_threshold),
            decompose_rank=get("trp_decompose_rank", None), retrain=get("trp_retrain", 0),
            retrain_lr=get("trp_retrain_lr", None), targets=tuple(get("trp_targets", ())),
            include_first_conv=get("trp_include_first_conv", False),
            include_1x1=get("trp_include_1x1", False),
            include_linear=get("trp_include_linear", False),
            counting=get("trp_counting", d.counting))

    def prepare_model(self, model: nn.Module, cfg: TRPConfig,
                      input_shape: tuple[int, ...]) -> nn.Module:
        """Unchanged model; ConfigError when no layer matches the target rule."""
        if not find_targets(model, cfg):
            raise ConfigError(
                f"TRP: no target layer in {type(model).__name__} (rule: non-1×1 Conv2d except the "
                f"first; targets={cfg.targets}); widen it with --trp-include-1x1/-linear/"
                "-first-conv or --trp-targets")
        return model

    def hooks(self, cfg: TRPConfig) -> list[Hook]:
        return [TRPHook(cfg)]

    def finalize(self, trainer: Trainer, cfg: TRPConfig) -> dict[str, Any]:
        """Decompose, evaluate before/after, optionally retrain, save + report (see module)."""
        hook = next((h for h in trainer.hooks if isinstance(h, TRPHook)), None)
        return finalize_trp(trainer, cfg, hook.last_ranks if hook is not None else {})


METHOD = TRPMethod()

__all__ = ["METHOD", "TRPConfig", "TRPHook", "TRPMethod", "find_targets"]



# ----- after training: decompose, evaluate, (retrain), save, report ------------------------------


def retrain_config(train_cfg: Any, cfg: TRPConfig) -> Any:
    """The trainer config of `retrain`: N epochs at a constant lr (the code's `--retrain`)."""
    return dataclasses.replace(train_cfg, epochs=cfg.retrain, milestones=[], schedule="none",
                               warmup_epochs=0.0, lr=cfg.retrain_lr or train_cfg.lr)


def _accuracy(trainer: Trainer, model: nn.Module) -> float | None:
    from rankwise.train import evaluate

    if trainer.test_data is None:
        return None
    return evaluate(model, trainer.test_data, trainer.cfg.eval_batch_size, trainer.device)["acc"]


def finalize_trp(trainer: Trainer, cfg: TRPConfig, train_ranks: dict[str, int]) -> dict[str, Any]:
    """Decompose `trainer.model` (targets only), evaluate, optionally retrain, save and report.

    Writes (main process) `RUN/factorized/` (`rankwise.io.save`), `RUN/trp_report.json` and
    `RUN/trp_report.md`; the dense model is saved by the trainer. Returns the JSON-able summary.
    """
    import json

    from rankwise.io.model_file import save
    from rankwise.surgery.decompose import decompose
    from rankwise.surgery.rank import ValueThreshold, parse_rank
    from rankwise.train import Trainer as _Trainer

    out, model = Path(trainer.out_dir), trainer.model
    input_shape = tuple(trainer.meta.get("input_shape") or trainer.train_data.images.shape[1:])
    targets = set(find_targets(model, cfg))
    policy = (parse_rank(cfg.decompose_rank) if cfg.decompose_rank
              else ValueThreshold(cfg.value_threshold))
    acc: dict[str, float | None] = {"dense": _accuracy(trainer, model)}
    fact, rep = decompose(model, format=cfg.scheme, rank=policy, input_shape=input_shape,
                          include=lambda name, _m: name in targets)
    acc["factorized"] = _accuracy(trainer, fact)
    if cfg.retrain > 0:
        rt = _Trainer(fact, retrain_config(trainer.cfg, cfg), trainer.train_data,
                      trainer.test_data, out / "retrain", meta=trainer.meta)
        acc["retrained"] = rt.fit().get("test_acc")
        fact = rt.model
    flops = trp_flops(model, rep.rows, input_shape)
    t = rep.totals
    layers = [{"name": r.name, "shape": list(r.dense_shape), "train_energy_rank":
               train_ranks.get(r.name), "format": r.format, "rank": r.rank,
               "params_before": r.params_before, "params_after": r.params_after,
               "macs_before": r.macs_before, "macs_after": r.macs_after,
               "trp_flops_before": flops["per_layer"].get(r.name, (None, None))[0],
               "trp_flops_after": flops["per_layer"].get(r.name, (None, None))[1],
               "note": r.note} for r in rep.rows]
    macs_speedup = t["macs_before"] / t["macs_after"] if t["macs_after"] else None
    counts = {"rankwise": {"params_before": t["params_before"], "params_after": t["params_after"],
                           "macs_before": t["macs_before"], "macs_after": t["macs_after"],
                           "speedup": macs_speedup},
              "trp": {"params_before": t["params_before"], "params_after": t["params_after"],
                      "flops_before": flops["flops_before"], "flops_after": flops["flops_after"],
                      "speedup": flops["speedup"]}}
    report = {"method": "trp", "config": METHOD.config_to_dict(cfg), "policy": str(policy),
              "input_shape": list(input_shape), "accuracy": acc, "counting": counts,
              "layers": layers, "factorized_dir": "factorized"}
    if trainer.is_main:
        arch = trainer.meta.get("model") or {}
        save(fact, out / "factorized", arch=arch.get("name"), arch_kwargs=arch.get("kwargs"),
             input_shape=input_shape, meta={"method": "trp", "accuracy": acc,
                                            "trp_config": report["config"]})
        (out / "trp_report.json").write_text(json.dumps(report, indent=2, default=str))
        (out / "trp_report.md").write_text(report_markdown(report))
    return {"acc_dense": acc["dense"], "acc_factorized": acc["factorized"],
            "acc_retrained": acc.get("retrained"), **{f"{k}_{mode}": v for mode, c in
                                                      counts.items() for k, v in c.items()},
            "speedup": counts[cfg.counting]["speedup"], "counting": cfg.counting,
            "factorized_dir": str(out / "factorized"), "report": str(out / "trp_report.json")}


def report_markdown(report: dict[str, Any]) -> str:
    """The TRP report as a Markdown table (one row per visited layer) plus totals."""
    def n(v: Any) -> str:
        return "–" if v is None else f"{v:,}" if isinstance(v, int) else str(v)

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.2f} %"

    lines = [f"# TRP report ({report['config']['scheme']}, decomposition {report['policy']})", "",
             "| layer | shape | train energy rank | rank | params | MACs | TRP FLOPs | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["layers"]:
        lines.append(
            f"| {r['name']} | {'×'.join(map(str, r['shape']))} | {n(r['train_energy_rank'])} | "
            f"{n(r['rank']) if r['format'] else 'dense'} | {n(r['params_before'])} → "
            f"{n(r['params_after'])} | {n(r['macs_before'])} → {n(r['macs_after'])} | "
            f"{n(r['trp_flops_before'])} → {n(r['trp_flops_after'])} | {r['note']} |")
    c, a = report["counting"], report["accuracy"]
    sp = {k: "–" if v["speedup"] is None else f"{v['speedup']:.2f}×" for k, v in c.items()}
    lines += ["", "| counting | params | MACs / FLOPs | speedup |", "|---|---|---|---|",
              f"| rankwise (all params, MACs/sample incl. FC) | {n(c['rankwise']['params_before'])}"
              f" → {n(c['rankwise']['params_after'])} | {n(c['rankwise']['macs_before'])} → "
              f"{n(c['rankwise']['macs_after'])} | {sp['rankwise']} |",
              f"| trp (per output pixel × pixels, convs only) | {n(c['trp']['params_before'])} → "
              f"{n(c['trp']['params_after'])} | {n(c['trp']['flops_before'])} → "
              f"{n(c['trp']['flops_after'])} | {sp['trp']} |", "",
              f"Test accuracy: dense {pct(a['dense'])}, factorized {pct(a['factorized'])}"
              + (f", retrained {pct(a['retrained'])}" if a.get("retrained") is not None else ""),
              ""]
    return "\n".join(lines)
