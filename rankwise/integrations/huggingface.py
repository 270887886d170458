"""`RankwiseTrainerCallback(method)`: a rankwise method object inside a Hugging Face `Trainer`.

    trp = rankwise.TRP(model, energy=0.9, nuclear_weight=3e-4)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=ds,
                                   callbacks=[RankwiseTrainerCallback(trp)])
    trainer.train()
    small, report = trp.finalize(model)

Call points: `on_step_begin → before_forward(global_step)` (before the step's micro-batches),
`on_pre_optimizer_step → add_penalty_grad(); after_backward(global_step)` (after gradient
accumulation and clipping), `on_optimizer_step → after_step`. HF callbacks never see the loss:
a penalty (ELRT, erank-reg) is therefore back-propagated on its own in `on_pre_optimizer_step`
(the same gradient as adding it to the loss); to add it to the loss instead, pass
`add_penalty=False` and override `Trainer.compute_loss` to return `loss + method.penalty()`.
fp16 with a GradScaler: the gradients are unscaled before `on_pre_optimizer_step` only when
clipping is on (`max_grad_norm > 0`, the HF default); bf16 needs nothing. Save the method's
state with `torch.save(method.state_dict(), ...)` next to HF's checkpoints.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from rankwise.methods.base import CompressionMethod


class RankwiseTrainerCallback(TrainerCallback):
    """Drives `method` (a `rankwise.methods.CompressionMethod`) from HF `Trainer`'s loop."""

    def __init__(self, method: CompressionMethod, add_penalty: bool = True) -> None:
        self.method = method
        self.add_penalty = add_penalty
        self._step = 0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._step = int(state.global_step)
        self.method.before_forward(self._step)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.add_penalty:
            self.method.add_penalty_grad()
        self.method.after_backward(self._step)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.method.after_step(self._step)

    def state_dict(self) -> dict[str, Any]:
        return self.method.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state)


__all__ = ["RankwiseTrainerCallback"]
