"""`Trainer`: the training loop every method plugs into (hooks), with checkpoint/resume and DDP.

Read `fit` → `_train_epoch` top to bottom: that is the whole algorithm. Everything else is
bookkeeping (seeding, checkpoints, logging, saving the final weights).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rankwise.errors import CheckpointError, ConfigError, NonFiniteLossError
from rankwise.train import distributed as D
from rankwise.train.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rankwise.train.config import TrainConfig
from rankwise.train.evaluate import autocast, evaluate
from rankwise.train.hooks import Hook
from rankwise.train.logger import RunLogger, make_progress
from rankwise.train.optim import make_sgd
from rankwise.train.schedule import make_scheduler

CONFIG = "config.json"


class Trainer:
    """Train `model` on `train_data` (an `ImageDataset`) with SGD (or `optimizer`) and `hooks`.

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
                 meta: dict[str, Any] | None = None) -> None:
        from rankwise.data import BatchLoader

        self.cfg = cfg
        self.dist, self.device = D.setup(cfg.device)
        self.out_dir = Path(out_dir)
        self.hooks = list(hooks)
        self.meta = dict(meta or {})
        self.train_data, self.test_data = train_data, test_data
        self.epoch = 0
        self.global_step = 0
        self.should_stop = False
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.model = model.to(self.device)
        if cfg.channels_last:  # NHWC: also pays on CPU for factorized (1x1-heavy) models
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = optimizer if optimizer is not None else make_sgd(self.model, cfg)
        if cfg.batch_size % self.dist.world_size:
            raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the "
                              f"{self.dist.world_size} DDP ranks; pick a multiple")
        self.loader = BatchLoader(train_data, batch_size=cfg.batch_size // self.dist.world_size,
                                  shuffle=True, augment=cfg.augment, device=self.device,
                                  seed=cfg.seed, drop_last=cfg.drop_last,
                                  rank=self.dist.rank, world_size=self.dist.world_size)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"training set of {len(train_data)} samples gives no batch of "
                              f"{cfg.batch_size}; lower batch_size or set drop_last=False")
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
        self._set_determinism()
        try:
            if self.is_main:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                self.write_config()
            if resume:
                self.load_checkpoint()
            else:
                self._seed_everything(cfg.seed)
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
                    for hook in self.hooks:
                        hook.on_epoch_end(self, self.epoch, metrics)
                    self.epoch += 1
                    self.logger.log({"event": "epoch", **metrics}, self.global_step)
                    self.save_checkpoint()
                    if progress is not None:
                        progress.console.print(_epoch_line(metrics, cfg.epochs), highlight=False)
            if not metrics:  # resumed a run that had already finished
                metrics = {"epoch": self.epoch, "step": self.global_step}
            if "test_acc" not in metrics:  # stopped early before an evaluation
                metrics.update(self._evaluate())
            for hook in self.hooks:
                hook.on_train_end(self)
            if self.is_main:
                self.save_model(extra_meta={"final_metrics": metrics})
            D.barrier(self.dist)
            return metrics
        finally:
            torch.use_deterministic_algorithms(previous_determinism)
            self.logger.close()

    def _train_epoch(self, progress) -> dict[str, float]:
        """One pass over the training set; returns rank-averaged train loss/acc and speed."""
        cfg = self.cfg
        self.forward_model.train()
        self.loader.set_epoch(self.epoch)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        task = None
        if progress is not None:
            task = progress.add_task(f"epoch {self.epoch + 1}/{cfg.epochs}",
                                     total=self.steps_per_epoch, loss=0.0, acc=0.0, ips=0.0)
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(self.loader):
            step = self.global_step
            for hook in self.hooks:
                hook.on_batch_start(self, step)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, cfg.precision):
                logits = self.forward_model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
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

            loss_sum += loss.detach().double() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            seen += int(y.shape[0])
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
        return {"epoch": self.epoch + 1, "step": self.global_step,
                "train_loss": float(totals[0]) / n, "train_acc": float(totals[1]) / n,
                "lr": self.lr, "time_s": elapsed, "images_per_s": float(totals[2]) / elapsed}

    # ------------------------------------------------------------------ helpers
    @property
    def lr(self) -> float:
        """Current learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def _evaluate(self) -> dict[str, float]:
        """Test loss/acc of `model` (every rank evaluates the whole test set: identical)."""
        if self.test_data is None:
            return {}
        r = evaluate(self.model, self.test_data, self.cfg.eval_batch_size, self.device,
                     precision=self.cfg.precision, channels_last=self.cfg.channels_last)
        return {"test_loss": r["loss"], "test_acc": r["acc"]}

    def _check_finite(self, loss: torch.Tensor, step: int, batch: int) -> None:
        loss = loss.detach()
        bad = (~torch.isfinite(loss)).to(torch.float32).reshape(1)
        if float(D.all_reduce_sum(bad, self.dist)) == 0:
            return
        kept = (f"the last good checkpoint {self.checkpoint_path} (after epoch {self.epoch}) "
                "is kept" if self.epoch > 0 else "no checkpoint was written yet")
        raise NonFiniteLossError(
            f"loss is {loss.item()} at global step {step} (epoch {self.epoch + 1}/"
            f"{self.cfg.epochs}, batch {batch}) with lr {self.lr:g}; {kept}. Lower the learning "
            "rate (--lr), add warm-up (--warmup) or check the method's extra loss weight")

    def _seed_everything(self, seed: int) -> None:
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

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
        path.write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        return path

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
        loader_state = {"seed": self.cfg.seed, "epoch": self.epoch}
        if hasattr(self.loader, "state_dict"):
            loader_state["state"] = self.loader.state_dict()
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "hooks": [h.state_dict() for h in self.hooks], "epoch": self.epoch,
                "global_step": self.global_step, "rng": rng_state(), "loader": loader_state,
                "config": self.cfg.to_dict()}

    def save_checkpoint(self) -> Path | None:
        """Atomically write `out_dir/checkpoint.pt` (rank 0 only)."""
        path = None
        if self.is_main:
            path = save_checkpoint(self.state_dict(), self.checkpoint_path)
        D.barrier(self.dist)
        return path

    def load_checkpoint(self, path: str | os.PathLike[str] | None = None) -> None:
        """Restore model, optimizer, schedule, hooks, counters and RNG from a checkpoint."""
        path = Path(path) if path is not None else self.checkpoint_path
        state = load_checkpoint(path)
        if len(state.get("hooks", [])) != len(self.hooks):
            raise CheckpointError(f"{path} holds state of {len(state['hooks'])} hooks, this run "
                                  f"has {len(self.hooks)}: resume with the same --method/flags")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{path}: model weights do not match this architecture ({e}); "
                                  "resume with the same --model/--width/--method") from e
        self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        for hook, hook_state in zip(self.hooks, state.get("hooks", []), strict=True):
            hook.load_state_dict(hook_state)
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        loader_state = state.get("loader", {})
        if "state" in loader_state and hasattr(self.loader, "load_state_dict"):
            self.loader.load_state_dict(loader_state["state"])
        if "rng" in state:
            set_rng_state(state["rng"])




def _epoch_line(m: dict[str, float], epochs: int) -> str:
    """`epoch 3/164  train loss 0.912 acc 68.1%  test loss 0.850 acc 71.0%  lr 0.1  4210 img/s`."""
    text = (f"epoch {m['epoch']}/{epochs}  train loss {m['train_loss']:.3f} "
            f"acc {100 * m['train_acc']:.1f}%")
    if "test_loss" in m:
        text += f"  test loss {m['test_loss']:.3f} acc {100 * m['test_acc']:.1f}%"
    return text + f"  lr {m['lr']:.3g}  {m['images_per_s']:.0f} img/s"


__all__ = ["CONFIG", "Trainer"]
