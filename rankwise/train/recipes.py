"""Recipes: `rankwise train --method NAME` = a method object wired into rankwise's `Trainer`.

A `Recipe` declares `name`, `help`, `config_cls` (options declared once with
`rankwise.options.option`; flags `--{name}-{field}`) and `builds_on_meta`, and implements

    cfg = recipe.config_from_args(args)              # or config_cls(...) / config_from_dict
    model = recipe.prepare_model(model, cfg, input_shape)
    trainer = Trainer(model, train_cfg, ..., hooks=recipe.hooks(cfg),
                      optimizer=recipe.make_optimizer(model, train_cfg, cfg))
    trainer.fit(); report = recipe.finalize(trainer, cfg)

The hooks are thin wrappers (`rankwise.train.method_hooks`) over the loop-agnostic objects of
`rankwise.methods`; `finalize` calls the object's `finalize` and writes the run's files.
Registered with `@register_recipe` into `RECIPES`; `get_recipe(name)`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from rankwise import options
from rankwise.errors import ConfigError
from rankwise.methods import ELRT, TRP, EffectiveRankRegularizer, NuclearRegularizer, sfw
from rankwise.methods.base import DenseConfig
from rankwise.methods.elrt import REPORT as ELRT_REPORT
from rankwise.methods.elrt import ELRTConfig, build_factorized
from rankwise.methods.erank_reg import ERankRegConfig
from rankwise.methods.nuclear import NuclearPenaltyConfig
from rankwise.methods.sfw import SFWConfig
from rankwise.methods.subspace import BASIS, SubspaceConfig, subspace_report
from rankwise.methods.subspace import REPORT as SUBSPACE_REPORT
from rankwise.methods.trp_config import TRPConfig
from rankwise.methods.trp_report import report_markdown
from rankwise.methods.trp_targets import require_targets
from rankwise.train import method_hooks as mh
from rankwise.train.hooks import Hook
from rankwise.train.method_hooks import ELRTHook, MethodHook, SFWMonitor, SubspaceHook

if TYPE_CHECKING:
    from rankwise.train import TrainConfig, Trainer


class Recipe:
    """Base recipe: plain training ("do nothing special" in every step)."""

    name: ClassVar[str] = "base"
    help: ClassVar[str] = ""
    config_cls: ClassVar[type] = DenseConfig
    builds_on_meta: ClassVar[bool] = False

    # ----- options (all derived from `config_cls`) ---------------------------------------
    def add_arguments(self, parser: Any) -> None:
        """`--{name}-{field}` flags of `config_cls` (defaults SUPPRESS: only given flags land)."""
        options.add_arguments(parser, self.config_cls, self.name)

    def config_from_args(self, args: Any, base: Any = None) -> Any:
        return options.from_args(self.config_cls, args, self.name, base)

    def given_flags(self, args: Any) -> list[str]:
        """The flags of this recipe present in `args` (to refuse them under another method)."""
        return options.given(args, self.config_cls, self.name)

    def config_to_dict(self, cfg: Any) -> dict[str, Any]:
        return options.to_dict(cfg) if cfg is not None else {}

    def config_from_dict(self, d: dict[str, Any]) -> Any:
        return options.from_dict(self.config_cls, d or {})

    # ----- the run -----------------------------------------------------------------------
    def prepare_model(self, model: nn.Module, cfg: Any,
                      input_shape: tuple[int, ...]) -> nn.Module:
        """Rewrite `model` before training; `input_shape` is (C, H, W)."""
        return model

    def hooks(self, cfg: Any) -> list[Hook]:
        return []

    def make_optimizer(self, model: nn.Module, train_cfg: TrainConfig,
                       cfg: Any) -> torch.optim.Optimizer | None:
        """An optimizer over `model`, or None for the trainer's SGD from `train_cfg`."""
        return None

    def finalize(self, trainer: Trainer, cfg: Any) -> dict[str, Any]:
        """After training: convert/report into `trainer.out_dir`; a JSON-able summary."""
        return {}


RECIPES: dict[str, Recipe] = {}


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: `RECIPES[cls.name] = cls()`."""
    RECIPES[cls.name] = cls()
    return cls


def get_recipe(name: str) -> Recipe:
    """The recipe `name`; ConfigError listing the known names otherwise."""
    if name not in RECIPES:
        raise ConfigError(f"unknown method {name!r}; available: {sorted(RECIPES)}")
    return RECIPES[name]


@register_recipe
class DenseRecipe(Recipe):
    name = "dense"
    help = "plain dense training (the baseline)"


# ----- TRP ----------------------------------------------------------------------------------


@register_recipe
class TRPRecipe(Recipe):
    """TRP during training; decompose, evaluate, (retrain), save + report after."""

    name = "trp"
    help = "Trained Rank Pruning (Xu et al. 2020): periodic truncation + nuclear sub-gradient"
    config_cls = TRPConfig

    def prepare_model(self, model: nn.Module, cfg: TRPConfig,
                      input_shape: tuple[int, ...]) -> nn.Module:
        require_targets(model, cfg)
        return model

    def hooks(self, cfg: TRPConfig) -> list[Hook]:
        return [MethodHook(lambda t: TRP(t.model, cfg, input_shape=mh.input_shape_of(t)))]

    def finalize(self, trainer: Trainer, cfg: TRPConfig) -> dict[str, Any]:
        """Writes `RUN/factorized/`, `RUN/trp_report.json` and `.md` (main process)."""
        import dataclasses

        from rankwise.io.model_file import save
        from rankwise.train.trainer import Trainer as _Trainer

        out, model, shape = Path(trainer.out_dir), trainer.model, mh.input_shape_of(trainer)
        trp = mh.method_of(trainer, TRP) or TRP(model, cfg)
        acc: dict[str, float | None] = {"dense": mh.accuracy(trainer, model)}
        fact, report = trp.finalize(model, input_shape=shape)
        acc["factorized"] = mh.accuracy(trainer, fact)
        if cfg.retrain > 0:
            rcfg = dataclasses.replace(trainer.cfg, epochs=cfg.retrain, milestones=[],
                                       schedule="none", warmup_epochs=0.0,
                                       lr=cfg.retrain_lr or trainer.cfg.lr)
            rt = _Trainer(fact, rcfg, trainer.train_data, trainer.test_data, out / "retrain",
                          meta=trainer.meta)
            acc["retrained"] = rt.fit().get("test_acc")
            fact = rt.model
        report.update(accuracy=acc, factorized_dir="factorized")
        if trainer.is_main:
            arch = trainer.meta.get("model") or {}
            save(fact, out / "factorized", arch=arch.get("name"), arch_kwargs=arch.get("kwargs"),
                 input_shape=shape, meta={"method": "trp", "accuracy": acc,
                                          "trp_config": report["config"]})
            (out / "trp_report.json").write_text(json.dumps(report, indent=2, default=str))
            (out / "trp_report.md").write_text(report_markdown(report))
        counts = report["counting"]
        return {"acc_dense": acc["dense"], "acc_factorized": acc["factorized"],
                "acc_retrained": acc.get("retrained"),
                **{f"{k}_{mode}": v for mode, c in counts.items() for k, v in c.items()},
                "speedup": report["speedup"], "counting": cfg.counting,
                "factorized_dir": str(out / "factorized"), "report": str(out / "trp_report.json")}


# ----- SFW and the nuclear-norm penalty ----------------------------------------------------


@register_recipe
class SFWRecipe(Recipe):
    name = "sfw"
    help = ("compression-aware training with Stochastic Frank-Wolfe (Zimmer et al. 2022): "
            "norm-ball constraints, no weight decay, then a no-retraining compression sweep")
    config_cls = SFWConfig

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
        return sfw.build_sfw(model, train_cfg.lr, cfg, seed=train_cfg.seed)

    def finalize(self, trainer: Trainer, cfg: SFWConfig) -> dict[str, Any]:
        """Feasibility check, `RUN/sfw_report.json`, and the sweep(s) into `RUN/sweep-*/`."""
        feas = sfw.feasibility(trainer.optimizer)
        ranks = sfw.rank_summary(trainer.model, cfg.sweep_scheme)
        sweeps = mh.run_sweeps(trainer, cfg, "sfw")
        report = {"method": "sfw", "config": options.to_dict(cfg), "feasibility": feas,
                  "rank_analysis": ranks, "sweeps": sweeps}
        path = Path(trainer.out_dir) / "sfw_report.json"
        if trainer.is_main:
            path.write_text(json.dumps(report, indent=2, default=str))
        return {"feasible": feas["feasible"], "max_norm_ratio": feas["max_norm_ratio"],
                "constrained_groups": feas["groups"],
                "weighted_erank_ratio": ranks["weighted_erank_ratio"], "sweeps": sweeps,
                "report": str(path)}


@register_recipe
class NuclearPenaltyRecipe(Recipe):
    name = "nuclear-penalty"
    help = "baseline: SGD + λ·Σ‖W‖_* on every conv (full-SVD sub-gradient), then the sweep"
    config_cls = NuclearPenaltyConfig

    def hooks(self, cfg: NuclearPenaltyConfig) -> list[Hook]:
        return [MethodHook(lambda t: NuclearRegularizer(t.model, cfg))]

    def finalize(self, trainer: Trainer, cfg: NuclearPenaltyConfig) -> dict[str, Any]:
        ranks = sfw.rank_summary(trainer.model, cfg.sweep_scheme)
        return {"weighted_erank_ratio": ranks["weighted_erank_ratio"], "rank_analysis": ranks,
                "sweeps": mh.run_sweeps(trainer, cfg, "nuclear-penalty")}


# ----- ELRT, erank-reg, subspace ------------------------------------------------------------


@register_recipe
class ELRTRecipe(Recipe):
    name = "elrt"
    help = "ELRT: train a Tucker-2 (or other format) factorized model from scratch"
    config_cls = ELRTConfig
    builds_on_meta = True  # the caller may build the base model under torch.device("meta")

    def prepare_model(self, model: nn.Module, cfg: ELRTConfig,
                      input_shape: tuple[int, ...]) -> nn.Module:
        model, report = build_factorized(model, cfg, tuple(input_shape))
        model.elrt_build_report = report.to_dict()  # plain attribute, read by finalize
        return model

    def hooks(self, cfg: ELRTConfig) -> list[Hook]:
        return [ELRTHook(lambda t: ELRT(t.model, cfg), cfg.log_every)]

    def finalize(self, trainer: Trainer, cfg: ELRTConfig) -> dict[str, Any]:
        """Evaluate, save the factorized model and write `elrt_report.json`."""
        from rankwise.analysis.accuracy import evaluate

        model = trainer.model
        elrt = mh.method_of(trainer, ELRT) or ELRT(model, cfg)
        elrt.build_report = getattr(model, "elrt_build_report", None)
        _, report = elrt.finalize(model, input_shape=mh.input_shape_of(trainer))
        final: dict[str, float] = {}
        if trainer.test_data is not None:
            r = evaluate(model, trainer.test_data, trainer.cfg.eval_batch_size, trainer.device)
            final = {"test_loss": float(r["loss"]), "test_acc": float(r["acc"])}
        report.update(final)
        headline = {k: report.get(k) for k in ("format", "params", "dense_params", "params_ratio",
                                               "macs", "dense_macs", "macs_ratio", "test_acc",
                                               "orth_penalty")}
        if trainer.is_main:
            trainer.save_model(extra_meta={"final_metrics": final, "elrt": headline})
            (trainer.out_dir / ELRT_REPORT).write_text(json.dumps(report, indent=2, default=str))
        return {**headline, "report": str(trainer.out_dir / ELRT_REPORT)}


@register_recipe
class ERankRegRecipe(Recipe):
    name = "erank-reg"
    help = "dense training + λ·Σ erank(W) (or nuclear / l1sv) regularizer toward low rank"
    config_cls = ERankRegConfig

    def hooks(self, cfg: ERankRegConfig) -> list[Hook]:
        return [MethodHook(lambda t: EffectiveRankRegularizer(t.model, cfg))]

    def finalize(self, trainer: Trainer, cfg: ERankRegConfig) -> dict[str, Any]:
        """Write `erank_report.json` / `.md` (per-layer rank analysis) into the run dir."""
        reg = mh.method_of(trainer, EffectiveRankRegularizer) or \
            EffectiveRankRegularizer(trainer.model, cfg)
        _, report = reg.finalize(trainer.model)
        if trainer.is_main:
            out = Path(trainer.out_dir)
            out.mkdir(parents=True, exist_ok=True)
            md = report.pop("markdown")
            (out / "erank_report.json").write_text(json.dumps(report, indent=2))
            (out / "erank_report.md").write_text(md)
        return report["summary"]


@register_recipe
class SubspaceRecipe(Recipe):
    name = "subspace"
    help = ("DLDR subspace training (Li et al. 2022): SGD for t epochs while sampling, PCA to d "
            "directions, then P-SGD / P-BFGS on the d coordinates")
    config_cls = SubspaceConfig

    def hooks(self, cfg: SubspaceConfig) -> list[Hook]:
        return [SubspaceHook(cfg)]

    def finalize(self, trainer: Trainer, cfg: SubspaceConfig) -> dict[str, Any]:
        """Write `subspace_report.json` + `subspace_basis.safetensors`; return a summary."""
        from rankwise.train.logger import read_metrics

        hook = next((h for h in trainer.hooks if isinstance(h, SubspaceHook)), None)
        if hook is None or hook.sub is None:
            return {}
        sub = hook.sub
        dense = None
        if cfg.dense_run:
            dense = [r for r in read_metrics(cfg.dense_run) if r.get("event") == "epoch"]
        report = subspace_report(sub, trainer.optimizer, dense)
        out = Path(trainer.out_dir)
        if trainer.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / SUBSPACE_REPORT).write_text(json.dumps(report, indent=2, default=str))
            if sub.basis is not None:
                from safetensors.torch import save_file

                save_file({"basis": sub.basis.detach().cpu().contiguous(),
                           "reference": sub.reference.detach().cpu().contiguous(),
                           "mean": sub.mean.detach().cpu().contiguous()}, str(out / BASIS))
        target = report["target"] or {}
        return {"d": cfg.dim, "t": cfg.sample_epochs, "optimizer": cfg.optimizer,
                "explained_variance": report["explained_variance_ratio_total"],
                "pca_s": sub.timings["pca_s"], "span_residual": report["span_residual"],
                "best_test_acc": report["best_test_acc"],
                "phase2_epochs_to_target": (target.get("subspace") or {}).get("phase2_epochs"),
                "report": SUBSPACE_REPORT}


__all__ = ["RECIPES", "Recipe", "get_recipe", "register_recipe"]
