"""Shared helpers of the own-loop / adapter equivalence tests: a tiny CNN, synthetic data, the
rankwise `Trainer` run with a recipe, and a plain PyTorch loop over the same batches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SHAPE = (3, 8, 8)
EPOCHS, BATCH, LR, SEED = 2, 32, 0.05, 0


class TinyNet(nn.Module):
    """stem 3×3 (first conv), a 3×3 target, a strided 3×3 target, an FC."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 12, 3, padding=1)
        self.down = nn.Conv2d(12, 12, 3, stride=2, padding=1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.body(x))
        x = torch.relu(self.down(x))
        return self.fc(x.mean(dim=(2, 3)))


def tiny(seed: int = SEED) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def data() -> tuple[Any, Any]:
    from rankwise.data import make_synthetic

    return (make_synthetic(True, 96, SHAPE, num_classes=5, seed=1),
            make_synthetic(False, 32, SHAPE, num_classes=5, seed=1))


def train_config(**kw: Any) -> Any:
    from rankwise.train import TrainConfig

    base = dict(epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=SEED, quiet=True, augment=False,
                schedule="none", milestones=[], num_threads=1)
    return TrainConfig(**{**base, **kw})


def batches(epochs: int = EPOCHS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The trainer's batches (same loader, seed and epochs), materialized."""
    from rankwise.data import BatchLoader

    loader = BatchLoader(data()[0], BATCH, shuffle=True, augment=False, device="cpu", seed=SEED)
    out = []
    for e in range(epochs):
        loader.set_epoch(e)
        out += [(x.clone(), y.clone()) for x, y in loader]
    return out


def trainer_run(out: Path, recipe_name: str, cfg: Any, model: nn.Module,
                **train_kw: Any) -> Any:
    """`rankwise train --method NAME` on `model`: prepare, fit, finalize. Returns the trainer."""
    from rankwise.train import Trainer
    from rankwise.train.recipes import get_recipe

    recipe = get_recipe(recipe_name)
    tc = train_config(**train_kw)
    model = recipe.prepare_model(model, cfg, SHAPE)
    train, test = data()
    trainer = Trainer(model, tc, train, test, out, hooks=recipe.hooks(cfg),
                      optimizer=recipe.make_optimizer(model, tc, cfg),
                      meta={"input_shape": list(SHAPE)})
    trainer.fit()
    trainer.report = recipe.finalize(trainer, cfg)
    return trainer


def own_loop(model: nn.Module, method: Any, opt: torch.optim.Optimizer,
             autocast: Callable[[], Any] | None = None) -> None:
    """The plain PyTorch loop of docs/own-loop.md over `batches()`."""
    import contextlib

    for step, (x, y) in enumerate(batches()):
        method.before_forward(step)
        with (autocast or contextlib.nullcontext)():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        pen = method.penalty()
        if pen is not None:
            loss = loss + pen
        opt.zero_grad(set_to_none=True)
        loss.backward()
        method.after_backward(step)
        opt.step()
        method.after_step(step)


def sgd(model: nn.Module, **kw: Any) -> torch.optim.Optimizer:
    """The trainer's SGD for `train_config(**kw)`."""
    from rankwise.train.optim import make_sgd

    return make_sgd(model, train_config(**kw))


def assert_same_weights(a: nn.Module, b: nn.Module, atol: float = 0.0) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k, v in sa.items():
        if atol == 0.0:
            assert torch.equal(v, sb[k]), k
        else:
            assert torch.allclose(v, sb[k], atol=atol, rtol=0), (k, (v - sb[k]).abs().max())
