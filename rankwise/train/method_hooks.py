"""Trainer hooks that drive the loop-agnostic method objects (`rankwise.methods`).

`MethodHook(make)` builds the method at `on_train_start` (`make(trainer)`) and maps the
trainer's call points onto the method's life cycle:
`on_batch_start → before_forward`, `extra_loss → penalty`, `after_backward → after_backward`,
`after_step → after_step`, `on_epoch_end → metrics`. `ELRTHook` adds the penalty log rows,
`SFWMonitor` logs SFW's step size, `SubspaceHook` swaps the optimizer/loader at the switch.
Also the small trainer helpers the recipes' `finalize` share (`method_of`, `run_sweeps`, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from rankwise.errors import ConfigError
from rankwise.methods.base import CompressionMethod
from rankwise.methods.sfw import SweepOptions, sfw_sweep
from rankwise.methods.subspace import SubspaceConfig, SubspaceTraining
from rankwise.train.hooks import Hook

if TYPE_CHECKING:
    from rankwise.train.trainer import Trainer


class MethodHook(Hook):
    """Drives `make(trainer)` (a `CompressionMethod`) from the trainer's loop."""

    def __init__(self, make: Callable[[Trainer], CompressionMethod]) -> None:
        self.make = make
        self.method: CompressionMethod | None = None
        self._pending: dict[str, Any] | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        if self.method is None:
            self.method = self.make(trainer)
        if self._pending is not None:  # a resume loads hook states before on_train_start
            self.method.load_state_dict(self._pending)
            self._pending = None

    def on_batch_start(self, trainer: Trainer, step: int) -> None:
        self.method.before_forward(step)

    def extra_loss(self, trainer: Trainer, model: nn.Module) -> torch.Tensor | None:
        return self.method.penalty()

    def after_backward(self, trainer: Trainer, step: int) -> None:
        self.method.after_backward(step)

    def after_step(self, trainer: Trainer, step: int) -> None:
        self.method.after_step(step)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        metrics.update(self.method.metrics())

    def state_dict(self) -> dict[str, Any]:
        if self.method is None:
            return dict(self._pending or {})
        return self.method.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.method is None:
            self._pending = dict(state)
        else:
            self.method.load_state_dict(state)


class ELRTHook(MethodHook):
    """`MethodHook` for ELRT, plus `{"event": "elrt", "orth_penalty"}` rows every `log_every`
    steps (default: the trainer's) and `orth_penalty` in each epoch's metrics."""

    def __init__(self, make: Callable[[Trainer], CompressionMethod],
                 log_every: int | None = None) -> None:
        super().__init__(make)
        self.log_every = log_every

    def after_step(self, trainer: Trainer, step: int) -> None:
        every = self.log_every or trainer.cfg.log_every
        if (step + 1) % every:
            return
        value = self.method.last_penalty
        if value is None:
            with torch.no_grad():
                value = self.method.metrics()["orth_penalty"]
        weight = self.method.cfg.orth_weight
        trainer.logger.log({"event": "elrt", "step": step + 1, "orth_penalty": value,
                            "orth_loss": weight * value}, step + 1)


class SFWMonitor(Hook):
    """Adds the mean step size η of the epoch's last SFW step to the epoch metrics (`sfw_eta`)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        etas = [float(e) for e in getattr(trainer.optimizer, "last_eta", [])]
        etas = [e for e in etas if math.isfinite(e)]
        if etas:
            metrics["sfw_eta"] = sum(etas) / len(etas)


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
    """`SubspaceTraining` in the trainer: samples at `samples_per_epoch` points per phase-1
    epoch, switches after epoch t and installs the phase-2 optimizer, schedule and loader."""

    def __init__(self, cfg: SubspaceConfig) -> None:
        self.cfg = cfg
        self.sub: SubspaceTraining | None = None
        self._state: dict[str, Any] = {}
        self._opt: torch.optim.Optimizer | None = None
        self._sched: Any = None
        self._points: set[int] = set()
        self._loader: _RecordingLoader | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        cfg = self.cfg
        if trainer.cfg.epochs <= cfg.sample_epochs:
            raise ConfigError(f"subspace: --epochs {trainer.cfg.epochs} leaves no phase 2 after "
                              f"{cfg.sample_epochs} sample epochs; set --epochs > "
                              "--subspace-sample-epochs (phase 2 runs epochs − t epochs)")
        groups = [list(g["params"]) for g in trainer.optimizer.param_groups]
        self.sub = SubspaceTraining(trainer.model, cfg, param_groups=groups)
        n, k = trainer.steps_per_epoch, cfg.samples_per_epoch
        if k > n:
            raise ConfigError(f"subspace: {k} samples per epoch but only {n} steps per epoch; "
                              "lower --subspace-samples-per-epoch")
        self._points = {round(n * i / k) for i in range(1, k + 1)}
        if self._state:
            self.sub.load_state_dict(self._state)
        if self.sub.phase == "subspace":  # resumed after the switch
            self._install(trainer, self._state)
        elif not self.sub.samples and trainer.epoch == 0:
            self.sub.sample()
        self._state = {}

    def after_step(self, trainer: Trainer, step: int) -> None:
        if self.sub.phase != "sample":
            return
        local = step - trainer.epoch * trainer.steps_per_epoch + 1  # batches done this epoch
        if local in self._points:
            self.sub.sample()

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        sub = self.sub
        phase = 1 if sub.phase == "sample" else 2
        sub.timings[f"phase{phase}_train_s"] += float(metrics.get("time_s", 0.0))
        metrics["subspace_phase"] = phase
        sub.history.append({"epoch": epoch + 1, "phase": phase,
                            **{k: metrics.get(k) for k in ("train_loss", "train_acc",
                                                           "test_loss", "test_acc", "time_s",
                                                           "lr")}})
        if phase == 1 and epoch + 1 == self.cfg.sample_epochs:
            sub.switch()
            self._install(trainer, {})
            metrics["subspace_explained_variance"] = sub.pca_info["total_ratio"]

    def state_dict(self) -> dict[str, Any]:
        if self.sub is None:
            return dict(self._state)
        state = self.sub.state_dict()
        if self.sub.phase == "subspace":
            state.update(optimizer=self._opt.state_dict() if self._opt is not None else {},
                         scheduler=self._sched.state_dict() if self._sched is not None else {})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = dict(state)

    def _install(self, trainer: Trainer, saved: dict[str, Any]) -> None:
        """Build the phase-2 optimizer/scheduler (restoring `saved` states) and swap them in."""
        from rankwise.data import BatchLoader
        from rankwise.optim.psgd import ProjectedBFGS
        from rankwise.train.schedule import LRFactor

        cfg = self.cfg
        opt = self.sub.make_optimizer()
        if isinstance(opt, ProjectedBFGS):
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
        self._opt, self._sched = opt, sched

    def _closure(self, trainer: Trainer) -> Callable[[], torch.Tensor]:
        """Loss of the current batch at the current parameters, train mode, buffers restored;
        averaged over DDP ranks so that every rank's line search takes the same decision."""
        from rankwise.analysis.accuracy import autocast

        def closure() -> torch.Tensor:
            if self._loader is None or self._loader.last is None:
                raise ConfigError("subspace: P-BFGS closure called before any batch was seen")
            x, y = self._loader.last
            buffers = list(trainer.model.buffers())
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


# ----- helpers the recipes' `finalize` use -------------------------------------------------


def method_of(trainer: Trainer, cls: type) -> Any:
    """The method object of class `cls` driven by one of `trainer.hooks`, or None."""
    for h in trainer.hooks:
        m = getattr(h, "method", None) or getattr(h, "sub", None)
        if isinstance(m, cls):
            return m
    return None


def input_shape_of(trainer: Trainer) -> tuple[int, ...] | None:
    """(C, H, W) of the run: `meta["input_shape"]`, else the dataset's shape, else None."""
    shape = trainer.meta.get("input_shape") or getattr(trainer.train_data, "shape", None)
    return tuple(shape) if shape is not None else None


def accuracy(trainer: Trainer, model: nn.Module) -> float | None:
    from rankwise.analysis.accuracy import evaluate

    if trainer.test_data is None:
        return None
    return evaluate(model, trainer.test_data, trainer.cfg.eval_batch_size, trainer.device)["acc"]


def run_sweeps(trainer: Trainer, opts: SweepOptions, label: str) -> dict[str, Any]:
    """The sweeps of `opts` written to `RUN/sweep-KIND/` (main process); short rows back."""
    from rankwise.compress.sweep_report import write_sweep

    if trainer.test_data is None or not opts.sweep_kinds() or not trainer.is_main:
        return {}
    rows = sfw_sweep(trainer.model, trainer.test_data, opts, input_shape=input_shape_of(trainer),
                     batch_size=trainer.cfg.eval_batch_size, device=trainer.device)
    out: dict[str, Any] = {}
    for kind, r in rows.items():
        write_sweep(Path(trainer.out_dir) / f"sweep-{kind}", {label: r}, kind,
                    meta={"run": str(trainer.out_dir), "method": label})
        out[kind] = [{k: x[k] for k in ("ratio", "acc", "stability", "compression")} for x in r]
    return out


__all__ = ["ELRTHook", "MethodHook", "SFWMonitor", "SubspaceHook", "accuracy", "input_shape_of",
           "method_of", "run_sweeps"]
