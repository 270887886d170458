"""ELRT — low-rank training from scratch (Sui, Yin, Gong, Xiao, Phan, Yuan; arXiv 2401.10341).

The network is built directly in factorized form: the dense architecture's Conv2d/Linear *specs*
(not weights) are walked and every targeted layer becomes `FORMATS[fmt].from_spec(spec, rank)`
with the variance-matching init of `rankwise.layers.init`; the full-size weight is never
trained, and never allocated when the base model lives on the `meta` device (`build_model`, or
`rankwise train`, which may build on meta for methods with `builds_on_meta`). During training a
soft orthogonality penalty `λ·Σ ‖UᵀU − I‖_F²` on the factors' bases (`rankwise.regularizers`) is
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
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rankwise.errors import ConfigError, RankError, UnsupportedLayerError
from rankwise.layers import FORMATS
from rankwise.layers.base import FactorizedLayer, Rank, dense_spec_of
from rankwise.layers.init import init_dense_, init_factorized_
from rankwise.layers.shapes import conv2d_macs, conv2d_params, linear_macs, linear_params
from rankwise.methods.base import Method
from rankwise.regularizers import factorized_layers, layer_penalties, orthogonality_penalty
from rankwise.surgery import DecomposeReport, LayerRow, matches
from rankwise.train.hooks import Hook

if TYPE_CHECKING:
    from rankwise.train import Trainer

CONV_FORMATS = ("tucker2", "channel", "spatial", "cp")
LINEAR_FORMATS = ("svd", "tt")
INT_RANK_FORMATS = frozenset({"svd", "channel", "spatial", "cp"})
REPORT = "elrt_report.json"


@dataclass
class ELRTConfig:
    """ELRT options (CLI `--elrt-<field>`). `format` is the conv format (a linear format
    "svd"/"tt" here means: linears use it, convs use "channel"); `linear_format` is for
    nn.Linear ("none" keeps them dense); 1×1 convs always use "channel". `rank` is a
    `parse_rank` string (fixed:/ratio:/budget:). `orth_weight` is λ. `init_*` choose the
    Kaiming target the factors match; `seed` seeds the init (None: global RNG)."""

    format: str = "tucker2"
    rank: str = "ratio:0.25"
    orth_weight: float = 1e-3
    linear_format: str = "svd"
    skip_first_conv: bool = True
    skip_classifier: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    init_mode: str = "fan_in"
    init_distribution: str = "normal"
    nonlinearity: str = "relu"
    seed: int | None = None
    log_every: int | None = None
    budget_allocation: str = "uniform"
    rank_multiple: int = 1

    def __post_init__(self) -> None:
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)
        if self.format not in CONV_FORMATS + LINEAR_FORMATS:
            raise ConfigError(f"--elrt-format {self.format!r}: choose one of "
                              f"{CONV_FORMATS + LINEAR_FORMATS}")
        if self.linear_format not in LINEAR_FORMATS + ("none",):
            raise ConfigError(f"--elrt-linear-format {self.linear_format!r}: choose svd, tt or "
                              "none")
        if not self.orth_weight >= 0:
            raise ConfigError(f"--elrt-orth-weight must be >= 0, got {self.orth_weight}")
        if int(self.rank_multiple) < 1:
            raise ConfigError(f"--elrt-rank-multiple must be >= 1, got {self.rank_multiple}")
        if self.budget_allocation not in ("uniform", "greedy"):
            raise ConfigError("--elrt-budget-allocation must be uniform or greedy, got "
                              f"{self.budget_allocation!r}")
        if self.init_mode not in ("fan_in", "fan_out"):
            raise ConfigError(f"--elrt-init-mode must be fan_in or fan_out, got {self.init_mode}")
        if self.init_distribution not in ("normal", "uniform"):
            raise ConfigError("--elrt-init-dist must be normal or uniform, got "
                              f"{self.init_distribution}")
        resolve_policy(self.rank)


def resolve_policy(rank: Any) -> Any:
    """The rank policy for ELRT; `ConfigError` for policies that need a trained weight."""
    from rankwise.rank import RankPolicy, parse_rank

    policy = parse_rank(rank) if isinstance(rank, str) else rank
    if isinstance(policy, int) or (isinstance(policy, tuple) and policy):
        from rankwise.rank import Fixed

        policy = Fixed(policy)
    if not isinstance(policy, RankPolicy):
        raise ConfigError(f"ELRT rank {rank!r} is not a rank policy; use fixed:8, ratio:0.25, "
                          "budget:params=0.3 or budget:macs=0.3")
    if policy.needs_spectra and not policy.is_global:
        raise ConfigError(
            f"ELRT rank {policy} reads the singular values of a trained weight, but ELRT trains "
            "from scratch and no dense weight ever exists; use fixed:R, ratio:F, "
            "budget:params=X or budget:macs=X (budgets assume a flat spectrum)")
    return policy


def _formats(cfg: ELRTConfig) -> tuple[str | None, str | None]:
    if cfg.format in LINEAR_FORMATS:
        return "channel", cfg.format
    return cfg.format, None if cfg.linear_format == "none" else cfg.linear_format


def _layer_rank(fmt: str, r: tuple[int, ...]) -> Rank:
    r = tuple(int(x) for x in r)
    return r[0] if fmt in INT_RANK_FORMATS and len(r) == 1 else r


@dataclass
class _Cand:
    name: str
    module: nn.Module
    fmt: str
    note: str = ""
    in_shape: tuple[int, ...] | None = None
    max_rank: tuple[int, ...] = ()

    def dense_cost(self) -> tuple[int, int | None]:
        spec = dense_spec_of(self.module)
        if isinstance(self.module, nn.Conv2d):
            macs = None if self.in_shape is None else conv2d_macs(spec, self.in_shape[-2:])
            return conv2d_params(spec), macs
        tokens = 1 if self.in_shape is None else max(1, math.prod(self.in_shape[1:-1]))
        return linear_params(spec), None if self.in_shape is None else linear_macs(spec, tokens)

    def cost(self, rank: Rank) -> tuple[int, int | None]:
        cls, spec = FORMATS[self.fmt], dense_spec_of(self.module)
        if isinstance(self.module, nn.Linear):
            params, macs = cls.cost(spec, rank, None)
            tokens = 1 if self.in_shape is None else max(1, math.prod(self.in_shape[1:-1]))
            return params, None if self.in_shape is None else macs * tokens
        hw = None if self.in_shape is None else (self.in_shape[-2], self.in_shape[-1])
        params, macs = cls.cost(spec, rank, hw)
        return params, macs if hw is not None else None

    def row(self, fmt: str | None, rank: Rank | None, note: str,
            after: tuple[int, int | None] | None = None) -> LayerRow:
        params, macs = self.dense_cost()
        after = after or (params, macs)
        spec = dense_spec_of(self.module)
        shape = ((spec.out_features, spec.in_features) if isinstance(self.module, nn.Linear)
                 else (spec.out_channels, spec.in_channels // spec.groups, *spec.kernel_size))
        notes = "; ".join(n for n in (self.note, note) if n)
        return LayerRow(self.name, type(self.module).__name__, shape, fmt, rank, params,
                        after[0], macs, after[1], notes)


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        if not t.is_meta:
            return t.device
    return torch.device("cpu")


def _candidates(model: nn.Module, cfg: ELRTConfig) -> list[_Cand]:
    conv_fmt, lin_fmt = _formats(cfg)
    out: list[_Cand] = []
    factorized: list[str] = []  # already-factorized layers: their sub-convs are not candidates
    for name, mod in model.named_modules():
        if any(name.startswith(p + ".") for p in factorized):
            continue
        if isinstance(mod, FactorizedLayer):
            factorized.append(name)
            continue
        if not name or not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        if cfg.include and not matches(name, mod, list(cfg.include)):
            continue
        if cfg.exclude and matches(name, mod, list(cfg.exclude)):
            continue
        is_conv = isinstance(mod, nn.Conv2d)
        fmt = conv_fmt if is_conv else lin_fmt
        if fmt is None:
            continue
        note = ""
        if is_conv and tuple(mod.kernel_size) == (1, 1) and fmt != "channel":
            fmt, note = "channel", "1×1 conv: channel format (a matrix factorization)"
        out.append(_Cand(name, mod, fmt, note))
    return out


def round_rank(rank: tuple[int, ...], max_rank: tuple[int, ...],
               multiple: int) -> tuple[int, ...]:
    """Each entry rounded down to a multiple of `multiple` (at least `multiple`), capped at its
    max rank: SIMD/tensor-core friendly channel counts (e.g. 8)."""
    if multiple <= 1:
        return tuple(int(r) for r in rank)
    return tuple(min(m, max(multiple, r // multiple * multiple))
                 for r, m in zip(rank, max_rank, strict=True))


def _uniform_budget(cands: list[_Cand], dense: list[int], idx: int, target: float,
                    total: int, multiple: int = 1) -> dict[str, tuple[int, ...] | None]:
    """The largest single fraction f (bisection) with `Ratio(f)` ranks in every layer (dense
    where that does not save) meeting `total_after ≤ target · total`."""
    from rankwise.rank import Ratio

    fixed = total - sum(dense)

    def plan(f: float) -> tuple[int, dict[str, tuple[int, ...] | None]]:
        spent, out = fixed, {}
        for c, d in zip(cands, dense, strict=True):
            r = round_rank(tuple(Ratio(f).select([], c.max_rank)), c.max_rank, multiple)
            cost = int(c.cost(_layer_rank(c.fmt, r))[idx] or 0)
            out[c.name] = r if cost < d else None
            spent += min(cost, d)
        return spent, out

    budget = target * total * (1.0 + 1e-12)
    spent, best = plan(1e-9)
    if spent > budget:
        raise ConfigError(f"ELRT budget {target} is unreachable: rank 1 in every targeted layer "
                          f"already keeps {spent / total:.4f}; use a larger ratio")
    lo, hi = 1e-9, 1.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        spent, out = plan(mid)
        if spent <= budget:
            lo, best = mid, out
        else:
            hi = mid
    spent, out = plan(1.0)
    return out if spent <= budget else best


def _allocate(cands: list[_Cand], policy: Any, model: nn.Module, total_macs: int | None,
              allocation: str = "uniform", multiple: int = 1,
              ) -> dict[str, tuple[int, ...] | None]:
    """Per-layer rank tuples (None = keep dense), rounded down to `multiple`. Budgets:
    "uniform" (one rank fraction for all layers, bisection, rounding included) or "greedy"
    (`rank.allocate_budget` on flat spectra, rounded afterwards: stays within budget)."""
    from rankwise.rank import BudgetCandidate, MacsBudget, allocate_budget

    if not policy.is_global:
        return {c.name: round_rank(tuple(policy.select([], c.max_rank)), c.max_rank, multiple)
                for c in cands}
    idx = 1 if isinstance(policy, MacsBudget) else 0
    metric = "macs" if idx else "params"
    if idx and (total_macs is None or any(c.in_shape is None for c in cands)):
        raise ConfigError("ELRT MACs budget needs every candidate layer to run in the forward "
                          "pass on input_shape; exclude unused layers (--elrt-exclude)")
    total = sum(p.numel() for p in model.parameters()) if idx == 0 else int(total_macs or 0)
    dense = [int(c.dense_cost()[idx] or 0) for c in cands]
    if allocation == "uniform":
        return _uniform_budget(cands, dense, idx, float(policy.ratio), total, multiple)
    flat = [[torch.ones(m, dtype=torch.float64) for m in c.max_rank] for c in cands]
    bc = [BudgetCandidate(c.name, s, c.max_rank, d,
                          lambda r, c=c: int(c.cost(_layer_rank(c.fmt, r))[idx] or 0))
          for c, s, d in zip(cands, flat, dense, strict=True)]
    ranks = allocate_budget(bc, float(policy.ratio), metric, fixed_cost=max(0, total - sum(dense)))
    return {c.name: None if r is None else round_rank(tuple(r), c.max_rank, multiple)
            for c, r in zip(cands, ranks, strict=True)}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _materialize(model: nn.Module, device: torch.device, cfg: ELRTConfig,
                 gen: torch.Generator | None) -> None:
    """Give real storage to every module still on `meta` (kept-dense convs/linears get the
    Kaiming target of `cfg`, others their `reset_parameters()`)."""
    inside: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(m, FactorizedLayer):
            inside.append(name)
            continue
        own = list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))
        if not any(t.is_meta for t in own):
            continue
        m.to_empty(device=device, recurse=False)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            init_dense_(m, cfg.init_mode, cfg.nonlinearity, distribution=cfg.init_distribution,
                        generator=gen)
        elif hasattr(m, "reset_parameters"):
            m.reset_parameters()
        else:
            raise ConfigError(f"{name or type(m).__name__} ({type(m).__name__}) is on the meta "
                              "device and has no reset_parameters(); build the base model on a "
                              "real device instead")


def build_factorized(model: nn.Module, cfg: ELRTConfig, input_shape: tuple[int, ...],
                     device: torch.device | str | None = None) -> tuple[nn.Module,
                                                                         DecomposeReport]:
    """Replace the targeted Conv2d/Linear of `model` (in place) by freshly initialized factorized
    layers; return it with a `DecomposeReport` (one row per conv/linear visited).

    `model` may live on `meta` (no dense weight is ever allocated): the factorized layers and
    the remaining modules are then created on `device` (default: CPU, or the device of the
    model's real tensors). `input_shape` (C, H, W) is traced once (on meta when the model is) for
    MACs and layer order (first conv, classifier)."""
    from rankwise.profile import count, trace_inputs

    policy = resolve_policy(cfg.rank)
    dev = torch.device(device) if device is not None else _device_of(model)
    gen = torch.Generator().manual_seed(int(cfg.seed)) if cfg.seed is not None else None
    input_shape = tuple(int(s) for s in input_shape)
    dense_layers = {n: m for n, m in model.named_modules()
                    if isinstance(m, (nn.Conv2d, nn.Linear))}
    seen = trace_inputs(model, input_shape, dense_layers)
    _, params_before, macs_before = count(model, input_shape)
    cands = _candidates(model, cfg)
    for c in cands:
        c.in_shape = seen.get(c.name)
    rows: list[LayerRow] = []
    order = [n for n in seen if n in dense_layers]
    skip: dict[str, str] = {}
    convs = [n for n in order if isinstance(dense_layers[n], nn.Conv2d)]
    linears = [n for n in order if isinstance(dense_layers[n], nn.Linear)]
    if cfg.skip_first_conv and convs:
        skip[convs[0]] = "kept dense: first conv (skip_first_conv)"
    if cfg.skip_classifier and linears:
        skip[linears[-1]] = "kept dense: classifier (skip_classifier)"
    usable: list[_Cand] = []
    for c in cands:
        if c.name in skip:
            rows.append(c.row(None, None, skip[c.name]))
            continue
        try:
            c.max_rank = tuple(int(x) for x in FORMATS[c.fmt].max_rank(dense_spec_of(c.module)))
        except (UnsupportedLayerError, ConfigError, RankError) as e:
            rows.append(c.row(None, None, f"kept dense: {c.fmt} does not support it ({e})"))
            continue
        usable.append(c)
    ranks = _allocate(usable, policy, model, macs_before, cfg.budget_allocation,
                      int(cfg.rank_multiple))
    for c in usable:
        r = ranks[c.name]
        if r is None:
            rows.append(c.row(None, None, f"kept dense: the {policy} allocator found no rank "
                                          "that saves"))
            continue
        rank = _layer_rank(c.fmt, r)
        (params, macs), (new_params, new_macs) = c.dense_cost(), c.cost(rank)
        worse = [w for w, b, a in (("params", params, new_params), ("MACs", macs, new_macs))
                 if b is not None and a is not None and a >= b]
        if worse:
            rows.append(c.row(None, None, f"kept dense: {c.fmt} at rank {rank} does not save "
                                          f"{' or '.join(worse)} ({new_params:,} vs {params:,} "
                                          "params)"))
            continue
        new = FORMATS[c.fmt].from_spec(dense_spec_of(c.module), rank, name=c.name, device=dev,
                                       dtype=c.module.weight.dtype)
        init_factorized_(new, cfg.init_mode, cfg.nonlinearity, distribution=cfg.init_distribution,
                         generator=gen)
        new.train(c.module.training)
        _replace(model, c.name, new)
        rows.append(c.row(c.fmt, rank, "", (new_params, new_macs)))
    _materialize(model, dev, cfg, gen)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise ConfigError(f"ELRT left tensors on the meta device: {left[:3]}; build the base "
                          "model on a real device")
    index = {n: i for i, (n, _) in enumerate(model.named_modules())}
    rows.sort(key=lambda row: index.get(row.name, len(index)))
    macs_after = None if macs_before is None else macs_before + sum(
        (r.macs_after or 0) - (r.macs_before or 0) for r in rows if r.format is not None)
    report = DecomposeReport(rows, format=cfg.format, linear_format=_formats(cfg)[1],
                             policy=str(policy), model_params_before=params_before,
                             model_params_after=sum(p.numel() for p in model.parameters()),
                             model_macs_before=macs_before, model_macs_after=macs_after)
    return model, report


def build_model(name: str, cfg: ELRTConfig, input_shape: tuple[int, ...] | None = None,
                device: torch.device | str | None = None, **model_kwargs: Any,
                ) -> tuple[nn.Module, DecomposeReport]:
    """`create_model(name, **model_kwargs)` on the `meta` device, then `build_factorized`:
    the ELRT model without ever allocating a dense weight of a replaced layer."""
    from rankwise.models import create_model, default_input_shape

    with torch.device("meta"):
        base = create_model(name, **model_kwargs)
    shape = tuple(input_shape) if input_shape is not None else tuple(default_input_shape(name))
    return build_factorized(base, cfg, shape, device=device)


def elrt_summary(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Params/MACs of `model` and of its dense counterpart, per factorized layer and in total."""
    from rankwise.profile import count, trace_inputs

    layers = factorized_layers(model)
    _, params, macs = count(model, input_shape)
    seen = trace_inputs(model, input_shape, dict(layers))
    penalties = layer_penalties(model)
    rows, d_params, d_macs = [], params, macs
    for name, layer in layers:
        with torch.device("meta"):  # only the spec is needed: no dense storage
            dense = layer.dense_spec.make()
        cand = _Cand(name, dense, layer.format, in_shape=seen.get(name))
        (dp, dm), (fp, fm) = cand.dense_cost(), cand.cost(layer.rank)
        d_params += dp - fp
        d_macs += (dm or 0) - (fm or 0)
        rank = list(layer.rank) if isinstance(layer.rank, tuple) else layer.rank
        rows.append({"name": name, "format": layer.format, "rank": rank, "params": fp,
                     "dense_params": dp, "macs": fm, "dense_macs": dm,
                     "orth_penalty": penalties.get(name)})
    return {"params": params, "dense_params": d_params, "params_ratio": params / d_params,
            "macs": macs, "dense_macs": d_macs, "macs_ratio": macs / d_macs if d_macs else None,
            "layers": rows}


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
