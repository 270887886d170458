"""Subspace training after DLDR (Li et al., "Low dimensional trajectory hypothesis is true",
TPAMI 2022; code nblt/DLDR): `SubspaceTraining`, the loop-agnostic object
(`rankwise train --method subspace` wraps it in `rankwise.train.method_hooks.SubspaceHook`).

Own loop: `sub = SubspaceTraining(model, dim=40, sample_epochs=t)`; `sub.sample()` at the start
and after every phase-1 epoch; then `sub.switch(model)` and `opt = sub.make_optimizer()` (for
P-BFGS also `opt.set_closure(loss_closure)`); train on with `opt`.

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

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rankwise.errors import ConfigError
from rankwise.linalg.pca import METHODS as PCA_METHODS
from rankwise.linalg.pca import pca
from rankwise.methods.base import CompressionMethod
from rankwise.methods.registry import register_method
from rankwise.optim.psgd import (
    LINE_SEARCHES,
    ProjectedBFGS,
    ProjectedSGD,
    flat_params,
    write_flat_,
)
from rankwise.options import option, to_dict, validate

OPTIMIZERS = ("psgd", "pbfgs")
STARTS = ("first", "last")
REPORT, BASIS = "subspace_report.json", "subspace_basis.safetensors"


@dataclass
class SubspaceConfig:
    """Options (CLI `--subspace-<field>`); defaults are the code's CIFAR settings unless noted."""

    dim: int = option(40, low=1, help="d, PCA directions trained in phase 2")
    sample_epochs: int = option(80, low=1, aliases=("--sample-epochs",),
                                help="t, phase-1 SGD epochs (phase 2: --epochs − t)")
    samples_per_epoch: int = option(1, low=1, help="parameter samples per phase-1 epoch (ours)")
    optimizer: str = option("psgd", choices=OPTIMIZERS, help="phase-2 optimizer")
    lr: float = option(1.0, low=0.0, low_open=True,
                       help="phase-2 lr (P-SGD) / first line-search step (P-BFGS)")
    momentum: float = option(0.9, low=0.0, high=1.0, high_open=True, help="P-SGD momentum")
    milestones: tuple[int, ...] = option((30, 50), low=1,
                                         help="phase-2 epochs where P-SGD's lr × gamma")
    gamma: float = option(0.1, low=0.0, low_open=True, help="P-SGD lr decay factor")
    weight_decay: float = option(0.0, low=0.0, help="phase-2 weight decay")
    start: str = option("first", choices=STARTS,
                        help="phase 2 restarts from the first sample (code) or the last")
    pca_method: str = option("svd", choices=PCA_METHODS, help="PCA algorithm (ours)")
    rho: float = option(0.4, low=0.0, high=1.0, low_open=True, high_open=True,
                        help="P-BFGS backtracking factor")
    c1: float = option(0.4, low=0.0, high=1.0, low_open=True, high_open=True,
                       help="P-BFGS Armijo constant")
    max_trials: int = option(20, low=1, help="P-BFGS line-search trials")
    line_search: str = option("backtrack", choices=LINE_SEARCHES, help="P-BFGS line search")
    batch_size: int | None = option(None, low=1, help="phase-2 global batch (None: the run's)")
    target_acc: float | None = option(None, low=0.0, high=1.0,
                                      help="target test accuracy (fraction) for the report")
    dense_run: str | None = option(None, help="a dense run dir: its final test accuracy is the "
                                              "target")
    target_tolerance: float = option(0.0, low=0.0, help="accuracy slack of the target")

    def __post_init__(self) -> None:
        self.milestones = tuple(int(m) for m in self.milestones)
        validate(self)
        n = self.sample_epochs * self.samples_per_epoch
        if self.dim > n:
            raise ConfigError(
                f"SubspaceConfig: dim={self.dim} exceeds the {n} directions that 1 + "
                f"sample_epochs·samples_per_epoch = {n + 1} centred samples span; lower "
                "--subspace-dim or raise --subspace-sample-epochs / --subspace-samples-per-epoch")


@register_method("subspace")
class SubspaceTraining(CompressionMethod):
    """Sampling in phase 1, PCA + restart at the switch, the phase-2 optimizer (module doc).

    `param_groups` (lists of tensors, optimizer order) default to one group of the model's
    trainable parameters. Public: `phase` ("sample" | "subspace"), `basis` P (d, D),
    `reference` θ_ref (D,), `mean` (D,), `pca_info`, `history` (one row per epoch, filled by
    the caller), `timings` (seconds), `num_samples`.
    """

    config_cls = SubspaceConfig

    def __init__(self, model: nn.Module, config: SubspaceConfig | None = None, *,
                 param_groups: list[list[torch.Tensor]] | None = None, **options: Any) -> None:
        base = config if config is not None else SubspaceConfig()
        self.cfg = dataclasses.replace(base, **options) if options else base
        self.model = model
        self.groups = param_groups or [[p for p in model.parameters() if p.requires_grad]]
        self.params = [p for g in self.groups for p in g]
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

    def sample(self) -> None:
        """Record the flattened parameters (CPU copy); the first call also keeps the buffers."""
        if not self.samples and not self.init_buffers:
            self.init_buffers = {k: b.detach().clone() for k, b in self.model.named_buffers()}
        self.samples.append(flat_params(self.params).cpu())
        self.num_samples = len(self.samples)

    @torch.no_grad()
    def switch(self) -> None:
        """PCA of the samples to `basis`; restart from the first sample (with its buffers) or
        continue from the last (`start`)."""
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
            write_flat_(self.params, self.reference.to(self.params[0].device))
            buffers = dict(self.model.named_buffers())
            for name, value in self.init_buffers.items():
                buffers[name].copy_(value)
        else:
            self.reference = samples[-1].clone()
        self.samples, self.init_buffers = [], {}
        self.phase = "subspace"
        self.timings["pca_s"] += time.perf_counter() - t0

    def make_optimizer(self) -> torch.optim.Optimizer:
        """`ProjectedSGD` or `ProjectedBFGS` over the groups in the basis (P-BFGS still needs
        `set_closure`)."""
        if self.basis is None:
            raise ConfigError("subspace: make_optimizer before switch(); sample, then switch")
        cfg, first = self.cfg, self.params[0]
        basis = self.basis.to(device=first.device, dtype=first.dtype)
        groups = [{"params": g} for g in self.groups]
        if cfg.optimizer == "psgd":
            return ProjectedSGD(groups, basis, lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
        return ProjectedBFGS(groups, basis, lr=cfg.lr, rho=cfg.rho, c1=cfg.c1,
                             max_trials=cfg.max_trials, line_search=cfg.line_search,
                             weight_decay=cfg.weight_decay)

    def span_residual(self) -> float | None:
        """‖(θ − θ_ref) − PᵀP(θ − θ_ref)‖ / ‖θ − θ_ref‖ of the current parameters (≈ 0)."""
        if self.basis is None or not self.params:
            return None
        p = self.basis.double().cpu()
        diff = flat_params(self.params).double().cpu() - self.reference.double().cpu()
        norm = float(diff.norm())
        return float((diff - p.T @ (p @ diff)).norm()) / norm if norm > 0 else 0.0

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"phase": self.phase, "history": self.history,
                                 "timings": dict(self.timings), "num_samples": self.num_samples}
        if self.phase == "sample":
            state["samples"] = torch.stack(self.samples) if self.samples else torch.empty(0)
            state["init_buffers"] = self.init_buffers
        else:
            state.update(basis=self.basis.cpu(), reference=self.reference.cpu(),
                         mean=self.mean.cpu(), pca=self.pca_info)
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

    def finalize(self, model: nn.Module | None = None, *, optimizer: Any = None,
                 dense_rows: list[dict[str, Any]] | None = None, **kwargs: Any
                 ) -> tuple[nn.Module, dict[str, Any]]:
        """`(model, subspace_report(...))`; the model is trained in place (no conversion)."""
        return (model if model is not None else self.model,
                subspace_report(self, optimizer, dense_rows))


# ----- report ----------------------------------------------------------------------------------


def _reach(rows: list[dict[str, Any]], level: float) -> dict[str, Any] | None:
    """First epoch row with test_acc ≥ level: its epoch and the train seconds spent so far."""
    spent = 0.0
    for row in rows:
        spent += float(row.get("time_s") or 0.0)
        if isinstance(row.get("test_acc"), (int, float)) and row["test_acc"] >= level:
            return {"epoch": int(row["epoch"]), "train_s": spent}
    return None


def _target(sub: SubspaceTraining, dense: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """Epochs/seconds until phase 2 reaches the target accuracy (a dense run's final test_acc,
    from its epoch rows `dense`, or `target_acc`): phase-2 epochs, and totals that include
    phase 1 and the PCA."""
    cfg = sub.cfg
    goal, source = cfg.target_acc, "target_acc"
    if cfg.dense_run:
        accs = [r["test_acc"] for r in dense or [] if isinstance(r.get("test_acc"), (int, float))]
        if not accs:
            raise ConfigError(f"subspace: --subspace-dense-run {cfg.dense_run} has no evaluated "
                              "epoch in metrics.jsonl; point it at a finished `rankwise train` run")
        if goal is None:
            goal, source = float(accs[-1]), f"final test_acc of {cfg.dense_run}"
    if goal is None:
        return None
    level = goal - cfg.target_tolerance
    hit = _reach([r for r in sub.history if r["phase"] == 2], level)
    t1 = sub.timings["phase1_train_s"] + sub.timings["pca_s"]
    return {"acc": goal, "source": source, "tolerance": cfg.target_tolerance,
            "subspace": None if hit is None else {
                "phase2_epochs": hit["epoch"] - cfg.sample_epochs, "phase2_train_s":
                hit["train_s"], "total_epochs": hit["epoch"], "total_train_s": hit["train_s"] + t1},
            "dense": None if dense is None else _reach(dense, level)}


def subspace_report(sub: SubspaceTraining, optimizer: Any = None,
                    dense_rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON-able content of `subspace_report.json` (see the module docstring)."""
    def best(rows: list[dict[str, Any]]) -> float | None:
        return max((r["test_acc"] for r in rows if isinstance(r.get("test_acc"), (int, float))),
                   default=None)

    cfg, rows = sub.cfg, sub.history
    report = {
        "method": "subspace", "config": to_dict(cfg), "d": cfg.dim,
        "t": cfg.sample_epochs, "samples": sub.num_samples,
        "D": sum(p.numel() for p in sub.params), "pca": sub.pca_info,
        "explained_variance_ratio_total": sub.pca_info.get("total_ratio"),
        "timings": {**sub.timings, "total_train_s": sum(sub.timings.values())},
        "epochs": rows, "final_test_acc": rows[-1].get("test_acc") if rows else None,
        "best_test_acc": best(rows), "best_phase2_test_acc": best([r for r in rows
                                                                   if r["phase"] == 2]),
        "span_residual": sub.span_residual(), "target": _target(sub, dense_rows)}
    if isinstance(optimizer, ProjectedBFGS):
        st = optimizer.sub_state
        report["line_search"] = {k: int(st.get(k, 0)) for k in
                                 ("step", "total_trials", "failed_searches", "skipped_updates")}
    return report


__all__ = ["BASIS", "REPORT", "SubspaceConfig", "SubspaceTraining", "subspace_report"]
