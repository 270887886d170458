"""Subspace training after DLDR (Li et al., "Low dimensional trajectory hypothesis is true",
TPAMI 2022; code nblt/DLDR) as a method: `rankwise train --method subspace`.

Phase 1 (epochs `0 .. t−1`): the trainer's SGD as usual; the flattened trainable parameters
(`D` numbers, optimizer order) are sampled at the initial point and after every epoch (code:
`train_sgd.py` saves `0.pt` before training and `{e+1}.pt` after epoch e; `--params_start 0
--params_end 81` then uses samples 0..80, i.e. t = 80 epochs). `samples_per_epoch = k > 1`
(ours) samples k evenly spaced times per epoch instead. Samples are kept on the CPU in the
parameters' dtype: `(1 + t·k) × D` numbers.
Switch (end of epoch t): centred PCA of the samples (`rankwise.linalg.pca`) to `P` (d × D,
orthonormal rows). `start="first"` restarts from sample 0 — the initial point — with its
BatchNorm buffers, as the code does (`model.load_state_dict(torch.load('{params_start}.pt'))`,
the saved state_dict holds the buffers); `start="last"` continues from where phase 1 ended.
Phase 2 (epochs `t .. epochs−1`): only the d coordinates move: the hook swaps
`trainer.optimizer` for `ProjectedSGD` (code: lr 1, momentum 0.9, no weight decay, lr × 0.1 at
phase-2 epochs 30 and 50) or `ProjectedBFGS` (code: lr 1, ρ = 0.4, c₁ = 0.4, ≤ 20 trials, batch
1024, constant) and `trainer.scheduler` for the phase-2 schedule. BatchNorm running stats are
buffers, not coordinates: they keep updating in train mode in both phases (as in the code);
P-BFGS's line-search forwards run in train mode too and restore the buffers afterwards (the code
reloads its state_dict). `finalize` writes `subspace_report.json` (d, t, PCA explained
variance, phase timings, per-epoch accuracy, epochs/time to reach a target accuracy, e.g. a
dense run's) and `subspace_basis.safetensors` (`basis` P, `reference` θ_ref, `mean`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from rankwise.errors import ConfigError
from rankwise.linalg.pca import METHODS as PCA_METHODS
from rankwise.linalg.pca import pca
from rankwise.methods.base import Method
from rankwise.optim.psgd import (
    LINE_SEARCHES,
    ProjectedBFGS,
    ProjectedSGD,
    flat_params,
    write_flat_,
)
from rankwise.train.hooks import Hook

if TYPE_CHECKING:
    from rankwise.train import Trainer

OPTIMIZERS = ("psgd", "pbfgs")
STARTS = ("first", "last")
REPORT, BASIS = "subspace_report.json", "subspace_basis.safetensors"


@dataclass
class SubspaceConfig:
    """Options (CLI `--subspace-<field>`); defaults are the code's CIFAR settings unless noted.

    `dim` d = 40; `sample_epochs` t = 80 (phase 1 length); `samples_per_epoch` 1 (code);
    `optimizer` psgd|pbfgs; `lr` 1; `momentum` 0.9 (P-SGD); `milestones` (30, 50) phase-2
    epochs where P-SGD's lr × `gamma` 0.1; `weight_decay` 0 in phase 2; `start` first|last;
    `pca_method` svd|gram (ours); `rho`/`c1`/`max_trials`/`line_search` of P-BFGS;
    `batch_size` of phase 2 (None: the run's; code: 128 P-SGD, 1024 P-BFGS); `target_acc`
    (fraction) or `dense_run` (a run dir whose final test accuracy is the target) and
    `target_tolerance` for the time-to-accuracy report (ours).
    """

    dim: int = 40
    sample_epochs: int = 80
    samples_per_epoch: int = 1
    optimizer: str = "psgd"
    lr: float = 1.0
    momentum: float = 0.9
    milestones: tuple[int, ...] = (30, 50)
    gamma: float = 0.1
    weight_decay: float = 0.0
    start: str = "first"
    pca_method: str = "svd"
    rho: float = 0.4
    c1: float = 0.4
    max_trials: int = 20
    line_search: str = "backtrack"
    batch_size: int | None = None
    target_acc: float | None = None
    dense_run: str | None = None
    target_tolerance: float = 0.0

    def __post_init__(self) -> None:
        self.milestones = tuple(int(m) for m in self.milestones)
        n = self.sample_epochs * self.samples_per_epoch
        checks = [
            (self.dim >= 1 and self.sample_epochs >= 1 and self.samples_per_epoch >= 1,
             "dim, sample_epochs and samples_per_epoch must be >= 1"),
            (self.dim <= n, f"dim={self.dim} exceeds the {n} directions that 1 + "
             f"sample_epochs·samples_per_epoch = {n + 1} centred samples span; lower "
             "--subspace-dim or raise --subspace-sample-epochs / --subspace-samples-per-epoch"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.start in STARTS, f"start must be one of {STARTS}"),
            (self.pca_method in PCA_METHODS, f"pca_method must be one of {PCA_METHODS}"),
            (self.line_search in LINE_SEARCHES, f"line_search must be one of {LINE_SEARCHES}"),
            (self.lr > 0 and 0 <= self.momentum < 1, "lr must be > 0, momentum in [0, 1)"),
            (all(m >= 1 for m in self.milestones) and self.gamma > 0,
             "milestones must be phase-2 epochs >= 1, gamma > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 < self.rho < 1 and 0 < self.c1 < 1 and self.max_trials >= 1,
             "rho and c1 must be in (0, 1), max_trials >= 1"),
            (self.batch_size is None or self.batch_size >= 1, "batch_size must be >= 1"),
            (self.target_acc is None or 0 <= self.target_acc <= 1,
             "target_acc is a fraction in [0, 1]"),
            (self.target_tolerance >= 0, "target_tolerance must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"SubspaceConfig: {msg} (--subspace-* flags)")


class _RecordingLoader:
    """Wraps the trainer's batch loader and keeps the last batch (P-BFGS re-evaluates it)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def __iter__(self):
        for x, y in self.inner:
            self.last = (x, y)
            yield x, y

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:  # set_epoch, state_dict, load_state_dict, ...
        return getattr(self.inner, name)


class SubspaceHook(Hook):
    """Sampling in phase 1, PCA + restart + optimizer swap at the switch (module docstring).

    Public after training: `basis` P (d, D), `reference` θ_ref (D,), `mean` (D,), `pca_info`
    (explained variance lists), `history` (one row per epoch), `timings` (seconds).
    """

    def __init__(self, cfg: SubspaceConfig) -> None:
        self.cfg = cfg
        self.phase = "sample"
        self.samples: list[torch.Tensor] = []
        self.init_buffers: dict[str, torch.Tensor] = {}
        self.basis: torch.Tensor | None = None
        self.reference: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None
        self.pca_info: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.timings = {"phase1_train_s": 0.0, "pca_s": 0.0, "phase2_train_s": 0.0}
        self.num_samples = 0
        self._opt: torch.optim.Optimizer | None = None
        self._sched: Any = None
        self._resume: dict[str, Any] = {}  # phase-2 optimizer/scheduler states to restore
        self._params: list[torch.Tensor] = []
        self._groups: list[list[torch.Tensor]] = []
        self._sample_points: set[int] = set()
        self._loader: _RecordingLoader | None = None

    # ----- Hook API ---------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer) -> None:
        cfg = self.cfg
        if trainer.cfg.epochs <= cfg.sample_epochs:
            raise ConfigError(f"subspace: --epochs {trainer.cfg.epochs} leaves no phase 2 after "
                              f"{cfg.sample_epochs} sample epochs; set --epochs > "
                              "--subspace-sample-epochs (phase 2 runs epochs − t epochs)")
        self._groups = [list(g["params"]) for g in trainer.optimizer.param_groups]
        self._params = [p for g in self._groups for p in g]
        n, k = trainer.steps_per_epoch, cfg.samples_per_epoch
        if k > n:
            raise ConfigError(f"subspace: {k} samples per epoch but only {n} steps per epoch; "
                              "lower --subspace-samples-per-epoch")
        self._sample_points = {round(n * i / k) for i in range(1, k + 1)}
        if self.phase == "subspace":  # resumed after the switch
            self._install(trainer, self._resume)
        elif not self.samples and trainer.epoch == 0:
            self._take_sample()
            self.init_buffers = {k: b.detach().clone()
                                 for k, b in trainer.model.named_buffers()}

    def after_step(self, trainer: Trainer, step: int) -> None:
        if self.phase != "sample":
            return
        local = step - trainer.epoch * trainer.steps_per_epoch + 1  # batches done this epoch
        if local in self._sample_points:
            self._take_sample()

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        phase = 1 if self.phase == "sample" else 2
        self.timings[f"phase{phase}_train_s"] += float(metrics.get("time_s", 0.0))
        metrics["subspace_phase"] = phase
        self.history.append({"epoch": epoch + 1, "phase": phase,
                             **{k: metrics.get(k) for k in ("train_loss", "train_acc",
                                                            "test_loss", "test_acc", "time_s",
                                                            "lr")}})
        if phase == 1 and epoch + 1 == self.cfg.sample_epochs:
            self._switch(trainer)
            metrics["subspace_explained_variance"] = self.pca_info["total_ratio"]

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"phase": self.phase, "history": self.history,
                                 "timings": dict(self.timings), "num_samples": self.num_samples}
        if self.phase == "sample":
            state["samples"] = torch.stack(self.samples) if self.samples else torch.empty(0)
            state["init_buffers"] = self.init_buffers
        else:
            state.update(basis=self.basis.cpu(), reference=self.reference.cpu(),
                         mean=self.mean.cpu(), pca=self.pca_info,
                         optimizer=self._opt.state_dict() if self._opt is not None else {},
                         scheduler=self._sched.state_dict() if self._sched is not None else {})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase = str(state.get("phase", "sample"))
        self.history = list(state.get("history", []))
        self.timings.update(state.get("timings", {}))
        self.num_samples = int(state.get("num_samples", 0))
        if self.phase == "sample":
            samples = state.get("samples")
            self.samples = list(samples.unbind(0)) if samples is not None and samples.numel() \
                else []
            self.init_buffers = dict(state.get("init_buffers", {}))
        else:
            self.basis, self.reference = state["basis"], state["reference"]
            self.mean, self.pca_info = state["mean"], dict(state.get("pca", {}))
            self._resume = {"optimizer": state.get("optimizer"),
                            "scheduler": state.get("scheduler")}

    # ----- the method -------------------------------------------------------------------
    def _take_sample(self) -> None:
        self.samples.append(flat_params(self._params).cpu())
        self.num_samples = len(self.samples)

    @torch.no_grad()
    def _switch(self, trainer: Trainer) -> None:
        """PCA of the samples, restart (`start`), install the phase-2 optimizer."""
        t0 = time.perf_counter()
        samples = torch.stack(self.samples)  # (1 + t·k, D)
        res = pca(samples, self.cfg.dim, method=self.cfg.pca_method)
        self.basis, self.mean = res.components, res.mean
        self.pca_info = {"explained_variance": res.explained_variance.tolist(),
                         "explained_variance_ratio": res.explained_variance_ratio.tolist(),
                         "singular_values": res.singular_values.tolist(),
                         "total_ratio": res.total_ratio}
        if self.cfg.start == "first":
            self.reference = samples[0].clone()
            write_flat_(self._params, self.reference.to(self._params[0].device))
            buffers = dict(trainer.model.named_buffers())
            for name, value in self.init_buffers.items():
                buffers[name].copy_(value)
        else:
            self.reference = samples[-1].clone()
        self.samples, self.init_buffers = [], {}
        self.phase = "subspace"
        self.timings["pca_s"] += time.perf_counter() - t0
        self._install(trainer, {})

    def _install(self, trainer: Trainer, saved: dict[str, Any]) -> None:
        """Build the phase-2 optimizer/scheduler (restoring `saved` states) and swap them in."""
        from rankwise.data import BatchLoader
        from rankwise.train.schedule import LRFactor

        cfg = self.cfg
        first = self._params[0]
        basis = self.basis.to(device=first.device, dtype=first.dtype)
        groups = [{"params": g} for g in self._groups]
        if cfg.optimizer == "psgd":
            opt: torch.optim.Optimizer = ProjectedSGD(
                groups, basis, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            opt = ProjectedBFGS(groups, basis, lr=cfg.lr, rho=cfg.rho, c1=cfg.c1,
                                max_trials=cfg.max_trials, line_search=cfg.line_search,
                                weight_decay=cfg.weight_decay)
            opt.set_closure(self._closure(trainer))
        inner = trainer.loader.inner if isinstance(trainer.loader, _RecordingLoader) \
            else trainer.loader
        if cfg.batch_size is not None:
            world = trainer.dist.world_size
            inner = BatchLoader(trainer.train_data, batch_size=max(1, cfg.batch_size // world),
                                shuffle=True, augment=trainer.cfg.augment, device=trainer.device,
                                seed=trainer.cfg.seed, drop_last=trainer.cfg.drop_last,
                                rank=trainer.dist.rank, world_size=world)
        self._loader = _RecordingLoader(inner)
        trainer.loader = self._loader
        trainer.steps_per_epoch = spe = len(inner)
        schedule = "step" if cfg.optimizer == "psgd" and cfg.milestones else "none"
        phase2 = trainer.cfg.epochs - cfg.sample_epochs
        factor = LRFactor(schedule, total_steps=phase2 * spe,
                          milestone_steps=[m * spe for m in cfg.milestones], gamma=cfg.gamma)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        if saved.get("optimizer"):
            opt.load_state_dict(saved["optimizer"])
        if saved.get("scheduler"):
            sched.load_state_dict(saved["scheduler"])
        trainer.optimizer, trainer.scheduler = opt, sched
        self._opt, self._sched, self._resume = opt, sched, {}

    def _closure(self, trainer: Trainer):
        """Loss of the current batch at the current parameters, train mode, buffers restored;
        averaged over DDP ranks so that every rank's line search takes the same decision."""
        from rankwise.train.evaluate import autocast

        def closure() -> torch.Tensor:
            if self._loader is None or self._loader.last is None:
                raise ConfigError("subspace: P-BFGS closure called before any batch was seen")
            x, y = self._loader.last
            buffers = [b for b in trainer.model.buffers()]
            saved = [b.clone() for b in buffers]
            with autocast(trainer.device, trainer.cfg.precision):
                logits = trainer.model(x)
            loss = F.cross_entropy(logits.float(), y,
                                   label_smoothing=trainer.cfg.label_smoothing).detach()
            for b, s in zip(buffers, saved, strict=True):
                b.copy_(s)
            if trainer.dist.enabled:
                torch.distributed.all_reduce(loss)
                loss = loss / trainer.dist.world_size
            return loss

        return closure

    def span_residual(self, trainer: Trainer) -> float | None:
        """‖(θ − θ_ref) − PᵀP(θ − θ_ref)‖ / ‖θ − θ_ref‖ of the current parameters (≈ 0)."""
        if self.basis is None or not self._params:
            return None
        p = self.basis.double().cpu()
        diff = flat_params(self._params).double().cpu() - self.reference.double().cpu()
        norm = float(diff.norm())
        return float((diff - p.T @ (p @ diff)).norm()) / norm if norm > 0 else 0.0


# ----- report ----------------------------------------------------------------------------------


def _reach(rows: list[dict[str, Any]], level: float) -> dict[str, Any] | None:
    """First epoch row with test_acc ≥ level: its epoch and the train seconds spent so far."""
    spent = 0.0
    for row in rows:
        spent += float(row.get("time_s") or 0.0)
        if isinstance(row.get("test_acc"), (int, float)) and row["test_acc"] >= level:
            return {"epoch": int(row["epoch"]), "train_s": spent}
    return None


def _target(hook: SubspaceHook, cfg: SubspaceConfig) -> dict[str, Any] | None:
    """Epochs/seconds until phase 2 reaches the target accuracy (a dense run's final test_acc
    or `target_acc`): phase-2 epochs, and totals that include phase 1 and the PCA."""
    from rankwise.train import read_metrics

    goal, source, dense = cfg.target_acc, "target_acc", None
    if cfg.dense_run:
        dense = [r for r in read_metrics(cfg.dense_run) if r.get("event") == "epoch"]
        accs = [r["test_acc"] for r in dense if isinstance(r.get("test_acc"), (int, float))]
        if not accs:
            raise ConfigError(f"subspace: --subspace-dense-run {cfg.dense_run} has no evaluated "
                              "epoch in metrics.jsonl; point it at a finished `rankwise train` run")
        if goal is None:
            goal, source = float(accs[-1]), f"final test_acc of {cfg.dense_run}"
    if goal is None:
        return None
    level = goal - cfg.target_tolerance
    hit = _reach([r for r in hook.history if r["phase"] == 2], level)
    t1 = hook.timings["phase1_train_s"] + hook.timings["pca_s"]
    return {"acc": goal, "source": source, "tolerance": cfg.target_tolerance,
            "subspace": None if hit is None else {
                "phase2_epochs": hit["epoch"] - cfg.sample_epochs, "phase2_train_s":
                hit["train_s"], "total_epochs": hit["epoch"], "total_train_s": hit["train_s"] + t1},
            "dense": None if dense is None else _reach(dense, level)}


def subspace_report(hook: SubspaceHook, trainer: Trainer, cfg: SubspaceConfig) -> dict[str, Any]:
    """The JSON-able content of `subspace_report.json` (see the module docstring)."""
    def best(rows: list[dict[str, Any]]) -> float | None:
        return max((r["test_acc"] for r in rows if isinstance(r.get("test_acc"), (int, float))),
                   default=None)

    rows = hook.history
    report = {
        "method": "subspace", "config": METHOD.config_to_dict(cfg), "d": cfg.dim,
        "t": cfg.sample_epochs, "samples": hook.num_samples,
        "D": sum(p.numel() for p in hook._params), "pca": hook.pca_info,
        "explained_variance_ratio_total": hook.pca_info.get("total_ratio"),
        "timings": {**hook.timings, "total_train_s": sum(hook.timings.values())},
        "epochs": rows, "final_test_acc": rows[-1].get("test_acc") if rows else None,
        "best_test_acc": best(rows), "best_phase2_test_acc": best([r for r in rows
                                                                   if r["phase"] == 2]),
        "span_residual": hook.span_residual(trainer), "target": _target(hook, cfg)}
    if isinstance(trainer.optimizer, ProjectedBFGS):
        st = trainer.optimizer.sub_state
        report["line_search"] = {k: int(st.get(k, 0)) for k in
                                 ("step", "total_trials", "failed_searches", "skipped_updates")}
    return report


# CLI: every config field is `--subspace-<field>` (dest `subspace_<field>`); extra aliases, help
_FLAGS: dict[str, tuple[tuple[str, ...], str]] = {
    "dim": ((), "d, PCA directions trained in phase 2"),
    "sample_epochs": (("--sample-epochs",), "t, phase-1 SGD epochs (phase 2: --epochs − t)"),
    "lr": ((), "phase-2 lr (P-SGD) / first line-search step (P-BFGS)"),
    "milestones": ((), "phase-2 epochs where P-SGD's lr is multiplied by --subspace-gamma"),
    "start": ((), "phase 2 restarts from the first sample (code) or continues from the last"),
    "batch_size": ((), "phase-2 global batch (None: --batch-size)"),
    "dense_run": ((), "a dense run dir: its final test accuracy is the target"),
}
_TYPES = {"batch_size": int, "target_acc": float, "dense_run": str}
_CHOICES = {"optimizer": OPTIMIZERS, "start": STARTS, "pca_method": PCA_METHODS,
            "line_search": LINE_SEARCHES}


class SubspaceMethod(Method):
    """`rankwise train --method subspace`: DLDR sampling → PCA → training d coordinates."""

    name = "subspace"
    config_class = SubspaceConfig
    help = ("DLDR subspace training (Li et al. 2022): SGD for t epochs while sampling, PCA to d "
            "directions, then P-SGD / P-BFGS on the d coordinates")

    def add_arguments(self, parser: Any) -> None:
        d = SubspaceConfig()
        for f in dataclasses.fields(SubspaceConfig):
            default = getattr(d, f.name)
            aliases, text = _FLAGS.get(f.name, ((), "see SubspaceConfig"))
            kw: dict[str, Any] = {"dest": f"subspace_{f.name}", "help": text}
            if f.name == "milestones":
                kw.update(default=",".join(map(str, default)))
            elif f.name in _CHOICES:
                kw.update(default=default, choices=_CHOICES[f.name])
            else:
                kw.update(default=default, type=_TYPES.get(f.name, type(default)))
            flags = (f"--subspace-{f.name.replace('_', '-')}", *aliases)
            try:
                parser.add_argument(*flags, **kw)
            except argparse.ArgumentError:  # an unprefixed alias another method already took
                parser.add_argument(flags[0], **kw)

    def config_from_args(self, args: Any) -> SubspaceConfig:
        d = SubspaceConfig()
        kwargs = {f.name: getattr(args, f"subspace_{f.name}", getattr(d, f.name))
                  for f in dataclasses.fields(SubspaceConfig)}
        text = kwargs["milestones"]
        if isinstance(text, str):
            try:
                kwargs["milestones"] = tuple(int(m) for m in text.split(",") if m.strip())
            except ValueError as e:
                raise ConfigError(f"--subspace-milestones {text!r}: expected phase-2 epochs "
                                  "like 30,50") from e
        return SubspaceConfig(**kwargs)

    def hooks(self, cfg: SubspaceConfig) -> list[Hook]:
        return [SubspaceHook(cfg)]

    def finalize(self, trainer: Trainer, cfg: SubspaceConfig) -> dict[str, Any]:
        """Write `subspace_report.json` + `subspace_basis.safetensors`; return a summary."""
        hook = next((h for h in trainer.hooks if isinstance(h, SubspaceHook)), None)
        if hook is None:
            return {}
        report = subspace_report(hook, trainer, cfg)
        out = Path(trainer.out_dir)
        if trainer.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / REPORT).write_text(json.dumps(report, indent=2, default=str))
            if hook.basis is not None:
                from safetensors.torch import save_file

                save_file({"basis": hook.basis.detach().cpu().contiguous(),
                           "reference": hook.reference.detach().cpu().contiguous(),
                           "mean": hook.mean.detach().cpu().contiguous()}, str(out / BASIS))
        target = report["target"] or {}
        return {"d": cfg.dim, "t": cfg.sample_epochs, "optimizer": cfg.optimizer,
                "explained_variance": report["explained_variance_ratio_total"],
                "pca_s": hook.timings["pca_s"], "span_residual": report["span_residual"],
                "best_test_acc": report["best_test_acc"],
                "phase2_epochs_to_target": (target.get("subspace") or {}).get("phase2_epochs"),
                "report": REPORT}


METHOD = SubspaceMethod()

__all__ = ["BASIS", "METHOD", "REPORT", "SubspaceConfig", "SubspaceHook", "SubspaceMethod",
           "subspace_report"]
