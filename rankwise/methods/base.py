"""`CompressionMethod`: the small, loop-agnostic life cycle every method object follows.

A method object wraps a model and is driven from *any* training loop (plain PyTorch, rankwise's
`Trainer`, Lightning, Hugging Face) by four calls, all no-ops by default:

    method = rankwise.TRP(model, energy=0.9, nuclear_weight=3e-4)
    for step, (x, y) in enumerate(batches):          # `step` counts optimizer steps
        method.before_forward(step)                  # e.g. TRP's truncation W ← U_r Σ_r V_rᵀ
        loss = loss_fn(model(x), y)
        pen = method.penalty()                       # e.g. ELRT's orthogonality term, or None
        if pen is not None:
            loss = loss + pen
        optimizer.zero_grad(); loss.backward()
        # with AMP: scaler.unscale_(optimizer) here, so that gradients are unscaled
        method.after_backward(step)                  # e.g. TRP's grad += λ·U_r V_rᵀ
        optimizer.step()                             # any optimizer
        method.after_step(step)
    small, report = method.finalize(model)           # the compressed model + a JSON-able report

Gradient accumulation: call `before_forward(step)` before every micro-batch (it acts once per
`step`), add `penalty()` to each micro-batch's (scaled) loss or call `add_penalty_grad()` once,
and call `after_backward(step)` once per optimizer step. DDP: every rank makes the same calls
(the methods act on identical replicated weights/gradients). `state_dict()` /
`load_state_dict()` hold plain types and tensors (checkpoint with `torch.save`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


class CompressionMethod:
    """Base class of the loop-agnostic method objects (`rankwise.TRP`, `rankwise.ELRT`, ...)."""

    name: ClassVar[str] = "base"

    def before_forward(self, step: int) -> None:
        """Before the forward of optimizer step `step` (idempotent within one step)."""

    def penalty(self) -> torch.Tensor | None:
        """A differentiable scalar to add to the loss this step, or None."""
        return None

    def add_penalty_grad(self) -> float | None:
        """Backward `penalty()` on its own (its gradient accumulates into `.grad`): for loops
        whose loss the method cannot reach (HF/Lightning callbacks). Call it after the data
        backward (and after `unscale_` under AMP), once per optimizer step. Returns its value."""
        pen = self.penalty()
        if pen is None:
            return None
        if pen.requires_grad:
            pen.backward()
        return float(pen.detach())

    def after_backward(self, step: int) -> None:
        """Gradients of step `step` are present (unscaled, DDP-averaged), before the update."""

    def after_step(self, step: int) -> None:
        """After the optimizer's update of step `step`."""

    def metrics(self) -> dict[str, float]:
        """Numbers worth logging now (e.g. energy ranks)."""
        return {}

    def finalize(self, model: nn.Module | None = None, **kwargs: Any) -> tuple[nn.Module, dict]:
        """After training: `(compressed model, JSON-able report)`; default the model as is."""
        return model if model is not None else getattr(self, "model", None), {}

    def counting_inputs(self, input_shape: tuple[int, ...] | None = None,
                        example_inputs: Any = None) -> tuple[tuple[int, ...] | None, Any]:
        """What `finalize` counts MACs on: `(input_shape, None)` or `(None, example_inputs)`.
        The arguments win (`input_shape` first), then the method's own `input_shape` and
        `example_inputs` attributes; `(None, None)` when none is known."""
        own = (getattr(self, "input_shape", None), getattr(self, "example_inputs", None))
        for shape, example in ((input_shape, None), (None, example_inputs), (own[0], None),
                               (None, own[1])):
            if shape is not None:
                return tuple(shape), None
            if example is not None:
                return None, example
        return None, None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


@dataclass
class DenseConfig:
    """Plain training has no options."""


def json_safe(value: Any) -> Any:
    """Tuples → lists, non-JSON leaves → str, recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


__all__ = ["CompressionMethod", "DenseConfig", "json_safe"]
