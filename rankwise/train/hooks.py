"""`Hook`: how methods plug into the training loop. Every method is optional (a no-op here).

Call order per step: `on_batch_start` → forward → loss + Σ `extra_loss` → backward →
`after_backward` (grads present) → `optimizer.step()` → `after_step` → lr schedule step.
The methods themselves are loop-agnostic objects (`rankwise.methods`); the hooks that drive
them from this loop are in `rankwise.train.method_hooks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from rankwise.train.config import TrainConfig


class Trainer(Protocol):
    """What a hook may read or change in the loop that calls it; `rankwise.train.Trainer` (and
    any loop that drives hooks) has these. Declared here so that hooks need not import the loop
    that imports them."""

    cfg: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    out_dir: Path
    meta: dict[str, Any]
    epoch: int
    global_step: int
    steps_per_epoch: int

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0, or the only one)."""
        ...


class Hook:
    """Base class of trainer plug-ins; override what you need.

    `state_dict()` must return tensors and plain Python types only (ints, floats, strings,
    lists, dicts, None): checkpoints are loaded with `torch.load(weights_only=True)`.
    """

    def on_train_start(self, trainer: Trainer) -> None:
        """Once per `fit`, after the model/optimizer are on the device and a resume is loaded."""

    def on_batch_start(self, trainer: Trainer, step: int) -> None:
        """Before the forward of global step `step` (0-based, counts across epochs)."""

    def extra_loss(self, trainer: Trainer, model: nn.Module) -> torch.Tensor | None:
        """A scalar added to the data loss this step (e.g. a regularizer), or None."""
        return None

    def after_backward(self, trainer: Trainer, step: int) -> None:
        """Gradients are present (and DDP-averaged); called before `optimizer.step()`."""

    def after_step(self, trainer: Trainer, step: int) -> None:
        """After `optimizer.step()` of global step `step`."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        """After epoch `epoch` (0-based) was evaluated, before its checkpoint is written."""

    def on_train_end(self, trainer: Trainer) -> None:
        """Once at the end of `fit`, before the final weights are saved."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (tensors and plain types only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
