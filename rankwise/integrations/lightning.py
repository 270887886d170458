"""`RankwiseCallback(method)`: a rankwise method object inside a Lightning `Trainer`.

    trp = rankwise.TRP(lit_module.net, energy=0.9, nuclear_weight=3e-4)
    trainer = lightning.Trainer(callbacks=[RankwiseCallback(trp)], ...)
    trainer.fit(lit_module)
    small, report = trp.finalize(lit_module.net, input_shape=(3, 32, 32))

Call points: `on_train_batch_start → before_forward(global_step)` (every micro-batch; the
method acts once per step), `on_before_optimizer_step → add_penalty_grad()` (unless
`add_penalty=False`: then add `method.penalty()` to the loss in `training_step` yourself) and
`after_backward(global_step)` — Lightning calls it after unscaling the gradients under AMP, once
per optimizer step with gradient accumulation — and `after_step` after the update. The
method's state is the callback's `state_dict` (saved in Lightning checkpoints).
"""

from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the older package name
    from pytorch_lightning.callbacks import Callback  # type: ignore[no-redef]

from rankwise.methods.base import CompressionMethod


class RankwiseCallback(Callback):
    """Drives `method` (a `rankwise.methods.CompressionMethod`) from Lightning's loop."""

    def __init__(self, method: CompressionMethod, add_penalty: bool = True) -> None:
        super().__init__()
        self.method = method
        self.add_penalty = add_penalty
        self._stepped: int | None = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        self.method.before_forward(int(trainer.global_step))

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        step = int(trainer.global_step)
        if self.add_penalty:
            self.method.add_penalty_grad()
        self.method.after_backward(step)
        self._stepped = step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._stepped is not None:
            self.method.after_step(self._stepped)
            self._stepped = None

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        metrics = self.method.metrics()
        if metrics:
            pl_module.log_dict({k: float(v) for k, v in metrics.items()})

    def state_dict(self) -> dict[str, Any]:
        return self.method.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.method.load_state_dict(state_dict)


__all__ = ["RankwiseCallback"]
