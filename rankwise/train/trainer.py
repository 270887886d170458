"""`Trainer`: the training loop every method plugs into (hooks), with checkpoint/resume and DDP.

Read `fit` → `_train_epoch` top to bottom: that is the whole algorithm. Everything else is
bookkeeping (seeding, checkpoints, logging, saving the final weights).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rankwise.analysis.accuracy import autocast
from rankwise.analysis.precision import warn_if_emulated
from rankwise.errors import ConfigError, NonFiniteLossError
from rankwise.train import distributed as D
from rankwise.train.batches import (
    LossFn,
    batch_size_of,
    evaluate_any,
    make_train_loader,
    to_device,
)
from rankwise.train.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    restore_trainer,
    save_checkpoint,
    seed_everything,
    trainer_state,
)
from rankwise.train.config import TrainConfig, check_device
from rankwise.train.hooks import Hook
from rankwise.train.logger import RunLogger, dumps, epoch_line, make_progress, repair_metrics
from rankwise.train.optim import make_sgd
from rankwise.train.rundir import RunLock, clean_stale_temporaries
from rankwise.train.schedule import make_scheduler
from rankwise.train.threads import set_threads

CONFIG = "config.json"


class Trainer:
    """Train `model` on `train_data` with SGD (or `optimizer`) and `hooks`.

    `train_data`/`test_data`: an `ImageDataset` (batched, shuffled and augmented on the device
    by `BatchLoader`; bitwise-exact resume) or any iterable of batches, e.g. a `DataLoader`
    (`set_epoch(e)` is called when it has one; a schedule other than "none" needs `len()`).
    Batches are `(x, y)` for the default cross-entropy; `loss_fn(model, batch) -> loss` (a
    scalar tensor) replaces it for any other batch structure (then no accuracy is reported).
    `lock=True` holds a `RunLock` on `out_dir` while `fit` writes (a second writer is refused).

    Writes into `out_dir` (rank 0 only): `config.json` (`{"train": cfg, **meta}`),
    `metrics.jsonl`, `checkpoint.pt` after every epoch, and the final weights via
    `rankwise.io.save` (`model.safetensors` + `model.json`). `meta` may hold `model`
    (`{"name", "kwargs"}`), `input_shape`, `dataset`, `method`, `method_config`: what `rankwise
    eval` / `rankwise.load` need to rebuild the model. Public state: `model` (never wrapped),
    `optimizer`, `scheduler`, `global_step`, `epoch` (completed epochs), `out_dir`, `device`,
    `cfg`, `hooks`, `should_stop` (a hook may set it to end `fit` after the current epoch).
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, train_data, test_data,
                 out_dir: str | os.PathLike[str], hooks: Sequence[Hook] = (),
                 optimizer: torch.optim.Optimizer | None = None,
                 meta: dict[str, Any] | None = None, loss_fn: LossFn | None = None,
                 lock: bool = True) -> None:
        self.cfg = cfg
        check_device(cfg.device)
        self.dist, self.device = D.setup(cfg.device)
        self.out_dir = Path(out_dir)
        self.hooks = list(hooks)
        self.meta = dict(meta or {})
        self.train_data, self.test_data = train_data, test_data
        self.loss_fn, self.lock = loss_fn, lock
        self.epoch = 0
        self.global_step = 0
        self.epoch_rows: list[dict[str, Any]] = []  # logged epoch metrics, kept in checkpoints
        self.should_stop = False
        self.threads = set_threads(cfg.num_threads)  # None: the free cores (train/threads.py)
        if self.is_main:
            warn_if_emulated(cfg.precision, self.device)
        self.model = model.to(self.device)
        if cfg.channels_last:  # NHWC: also pays on CPU for factorized (1x1-heavy) models
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = optimizer if optimizer is not None else make_sgd(self.model, cfg)
        if cfg.batch_size % self.dist.world_size:
            raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the "
                              f"{self.dist.world_size} DDP ranks; pick a multiple")
        self.loader, self.steps_per_epoch = make_train_loader(train_data, cfg, self.device,
                                                              self.dist)
        self.scheduler = make_scheduler(self.optimizer, cfg.schedule, cfg.epochs,
                                        self.steps_per_epoch, cfg.milestones, cfg.gamma,
                                        cfg.warmup_epochs)
        self.forward_model: nn.Module = self.model  # what the loop calls: maybe DDP / compiled
        if self.dist.enabled:
            self.forward_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.forward_model = torch.compile(self.forward_model)
        self.logger = RunLogger(self.out_dir, enabled=self.is_main, tensorboard=cfg.tensorboard)

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0, or the only process)."""
        return self.dist.is_main

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    # ------------------------------------------------------------------ the algorithm
    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train `cfg.epochs` epochs (from the checkpoint in `out_dir` if `resume`).

        Returns the last epoch's metrics: `train_loss`, `train_acc`, `test_loss`, `test_acc`,
        `epoch` (completed), `step`, `images_per_s`. Raises NonFiniteLossError on NaN/Inf loss
        (the previous epoch's checkpoint is left untouched).
        """
        cfg = self.cfg
        previous_determinism = torch.are_deterministic_algorithms_enabled()
        lock = RunLock(self.out_dir) if self.is_main and self.lock else None
        if lock is not None:
            lock.acquire()
        try:
            self._set_determinism()
            if self.is_main:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            if lock is not None:  # only the lock holder may remove another writer's temporaries
                clean_stale_temporaries(self.out_dir)
            if resume:  # validated (digest, hooks, weights) before anything is rewritten
                self.load_checkpoint()
                if self.is_main:
                    repair_metrics(self.out_dir, self.epoch, self.global_step, self.epoch_rows)
            else:
                seed_everything(cfg.seed)
            if self.is_main:
                self.write_config()
            for hook in self.hooks:
                hook.on_train_start(self)
            metrics: dict[str, float] = {}
            progress = make_progress(self.is_main and not cfg.quiet)
            with progress if progress is not None else contextlib.nullcontext():
                while self.epoch < cfg.epochs and not self.should_stop:
                    metrics = self._train_epoch(progress)
                    last = self.epoch + 1 == cfg.epochs
                    if last or (self.epoch + 1) % cfg.eval_every == 0:
                        metrics.update(self._evaluate())
                    self._check_finite_metrics(metrics)
                    for hook in self.hooks:
                        hook.on_epoch_end(self, self.epoch, metrics)
                    self.epoch += 1
                    self.epoch_rows.append(json.loads(dumps(metrics)))
                    self.save_checkpoint()  # durable first: a kill never duplicates a row
                    self.logger.log({"event": "epoch", **metrics}, self.global_step)
                    if progress is not None:
                        progress.console.print(epoch_line(metrics, cfg.epochs), highlight=False)
            if not metrics:  # resumed a run that had already finished
                metrics = {"epoch": self.epoch, "step": self.global_step}
            if "test_loss" not in metrics:  # stopped early before an evaluation
                metrics.update(self._evaluate())
                self._check_finite_metrics(metrics)
            for hook in self.hooks:
                hook.on_train_end(self)
            if self.is_main:
                self.save_model(extra_meta={"final_metrics": metrics})
            D.barrier(self.dist)
            return metrics
        finally:
            torch.use_deterministic_algorithms(previous_determinism)
            self.logger.close()
            if lock is not None:
                lock.release()

    def _train_epoch(self, progress) -> dict[str, float]:
        """One pass over the training set; returns rank-averaged train loss/acc and speed."""
        cfg = self.cfg
        self.forward_model.train()
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self.epoch)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        task = None
        if progress is not None:
            task = progress.add_task(f"epoch {self.epoch + 1}/{cfg.epochs}",
                                     total=self.steps_per_epoch, loss=0.0, acc=0.0, ips=0.0)
        t0 = time.perf_counter()
        for i, batch in enumerate(self.loader):
            step = self.global_step
            for hook in self.hooks:
                hook.on_batch_start(self, step)
            loss, logits, y = self._loss(to_device(batch, self.device))
            total = loss
            for hook in self.hooks:
                extra = hook.extra_loss(self, self.model)
                if extra is not None:
                    total = total + extra
            if step % cfg.check_finite_every == 0:
                self._check_finite(total, step, i)
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            for hook in self.hooks:
                hook.after_backward(self, step)
            self.optimizer.step()
            for hook in self.hooks:
                hook.after_step(self, step)
            self.scheduler.step()
            self.global_step += 1

            k = batch_size_of(batch)
            loss_sum += loss.detach().double() * k
            if logits is not None:
                correct += (logits.detach().argmax(1) == y).sum()
            seen += k
            if self.global_step % cfg.log_every == 0:
                self.logger.log({"event": "step", "epoch": self.epoch + 1,
                                 "step": self.global_step, "loss": loss.item(), "lr": self.lr},
                                self.global_step)
            if task is not None:
                ips = seen * self.dist.world_size / max(time.perf_counter() - t0, 1e-9)
                progress.update(task, advance=1, loss=float(loss_sum) / seen,
                                acc=float(correct) / seen, ips=ips)
        totals = torch.stack([loss_sum, correct.double(),
                              torch.tensor(float(seen), dtype=torch.float64, device=self.device)])
        D.all_reduce_sum(totals, self.dist)
        elapsed = time.perf_counter() - t0
        if task is not None:
            progress.remove_task(task)
        n = max(float(totals[2]), 1.0)
        out = {"epoch": self.epoch + 1, "step": self.global_step,
               "train_loss": float(totals[0]) / n, "train_acc": float(totals[1]) / n,
               "lr": self.lr, "time_s": elapsed, "images_per_s": float(totals[2]) / elapsed}
        if self.loss_fn is not None:
            del out["train_acc"]
        return out

    def _loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        """(loss, logits or None, labels or None) of one batch already on the device."""
        if self.loss_fn is not None:
            with autocast(self.device, self.cfg.precision):
                return self.loss_fn(self.forward_model, batch).float(), None, None
        x, y = batch
        if self.cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.cfg.precision):
            logits = self.forward_model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
        return loss, logits, y

    # ------------------------------------------------------------------ helpers
    @property
    def lr(self) -> float:
        """Current learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def _evaluate(self) -> dict[str, float]:
        """Test loss/acc of `model` (every rank evaluates the whole test set: identical)."""
        return evaluate_any(self.model, self.test_data, self.loss_fn, self.cfg.eval_batch_size,
                            self.device, self.cfg.precision, self.cfg.channels_last)

    def _check_finite_metrics(self, metrics: dict[str, Any]) -> None:
        """NonFiniteLossError when an epoch's train or test loss is NaN/Inf (a diverged run
        must not be checkpointed, logged or reported as finished)."""
        bad = {k: v for k, v in metrics.items() if k in ("train_loss", "test_loss")
               and isinstance(v, float) and not math.isfinite(v)}
        if bad:
            raise NonFiniteLossError(
                f"{bad} after epoch {self.epoch + 1}/{self.cfg.epochs} with lr {self.lr:g}: the "
                f"run diverged; {self._kept()}. Lower the learning rate (--lr), add warm-up "
                "(--warmup) or check the method's weights")

    def _kept(self) -> str:
        """What survives a divergence: the last good checkpoint, or nothing yet."""
        if self.epoch > 0:
            return (f"the last good checkpoint {self.checkpoint_path} (after epoch {self.epoch}) "
                    "is kept")
        return "no checkpoint was written yet"

    def _check_finite(self, loss: torch.Tensor, step: int, batch: int) -> None:
        loss = loss.detach()
        bad = (~torch.isfinite(loss)).to(torch.float32).reshape(1)
        if float(D.all_reduce_sum(bad, self.dist)) == 0:
            return
        raise NonFiniteLossError(
            f"loss is {loss.item()} at global step {step} (epoch {self.epoch + 1}/"
            f"{self.cfg.epochs}, batch {batch}) with lr {self.lr:g}; {self._kept()}. Lower the "
            "learning rate (--lr), add warm-up (--warmup) or check the method's extra loss weight")

    def _set_determinism(self) -> None:
        on = self.cfg.deterministic
        if on is None:
            on = self.device.type == "cpu"
        if on and self.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(bool(on), warn_only=True)

    def write_config(self) -> Path:
        """Write `out_dir/config.json`: `{"train": cfg, "world_size", **meta}`."""
        path = self.out_dir / CONFIG
        config = {"train": self.cfg.to_dict(), "world_size": self.dist.world_size, **self.meta}
        from rankwise.io.atomic import atomic_write

        return atomic_write(path, dumps(config, indent=2, sort_keys=True).encode())

    def save_model(self, model: nn.Module | None = None,
                   extra_meta: dict[str, Any] | None = None) -> Path:
        """`rankwise.io.save` of `model` (default `self.model`) into `out_dir`, with the
        architecture from `meta["model"]` so `rankwise.load(out_dir)` can rebuild it."""
        from rankwise.io.model_file import save

        arch = self.meta.get("model") or {}
        meta = {k: v for k, v in self.meta.items() if k != "model"}
        meta.update(extra_meta or {})
        meta = json.loads(json.dumps(meta, default=str))
        return save(model if model is not None else self.model, self.out_dir,
                    arch=arch.get("name"), arch_kwargs=arch.get("kwargs"),
                    input_shape=self.meta.get("input_shape"), meta=meta)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything `fit(resume=True)` needs, as tensors and plain types."""
        return trainer_state(self)

    def save_checkpoint(self) -> Path | None:
        """Atomically write `out_dir/checkpoint.pt` with its digest (rank 0 only)."""
        path = None
        if self.is_main:
            path = save_checkpoint(self.state_dict(), self.checkpoint_path)
        D.barrier(self.dist)
        return path

    def load_checkpoint(self, path: str | os.PathLike[str] | None = None) -> None:
        """Restore model, optimizer, schedule, hooks, counters and RNG from a checkpoint
        (CheckpointError on a damaged file or a mismatch, before anything is changed)."""
        path = Path(path) if path is not None else self.checkpoint_path
        restore_trainer(self, load_checkpoint(path), path)


__all__ = ["CONFIG", "Trainer"]
