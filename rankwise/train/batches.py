"""What `Trainer` trains on: an `ImageDataset` (batched by `BatchLoader`) or any iterable of
batches — `(x, y)` pairs for the default cross-entropy, anything a custom `loss_fn(model,
batch) -> loss` understands otherwise (e.g. a `torch.utils.data.DataLoader`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rankwise.analysis.accuracy import autocast, evaluate
from rankwise.nested import map_tensors

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def is_image_dataset(data: object) -> bool:
    """True for rankwise's `ImageDataset` (uint8 images + labels held as tensors)."""
    from rankwise.data import ImageDataset

    return isinstance(data, ImageDataset)


def to_device(batch: Any, device: torch.device) -> Any:
    """`batch` with every tensor (in tuples, lists, and mappings such as a Hugging Face
    `BatchEncoding`, returned as a dict) moved to `device`."""
    return map_tensors(lambda t: t.to(device, non_blocking=True), batch)


def batch_size_of(batch: Any) -> int:
    """Samples in `batch`: the leading size of its first tensor (1 if it has none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    items = batch.values() if isinstance(batch, Mapping) else batch
    if isinstance(items, (list, tuple)) or isinstance(batch, Mapping):
        for b in items:
            return batch_size_of(b)
    return 1


def steps_in(batches: Iterable[Any]) -> int | None:
    """`len(batches)` when the iterable has one, else None."""
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None


def make_train_loader(data: Any, cfg: Any, device: torch.device, dist: Any) -> tuple[Any, int]:
    """(batches, steps per epoch) of the training data: a shuffled, augmented `BatchLoader`
    (this rank's share of the global batch) for an `ImageDataset`, `data` itself otherwise."""
    from rankwise.errors import ConfigError

    if is_image_dataset(data):
        from rankwise.data import BatchLoader

        data = BatchLoader(data, cfg.batch_size // dist.world_size, shuffle=True,
                           augment=cfg.augment, device=device, seed=cfg.seed,
                           drop_last=cfg.drop_last, rank=dist.rank, world_size=dist.world_size)
    steps = steps_in(data)
    if steps is None and (cfg.schedule != "none" or cfg.warmup_epochs):
        raise ConfigError(f"train_data ({type(data).__name__}) has no len(), which the "
                          f"{cfg.schedule!r} schedule and warm-up need; give a sized iterable "
                          "or use schedule='none' without warm-up")
    if steps == 0:
        raise ConfigError(f"training data {type(data).__name__} gives no batch of "
                          f"{cfg.batch_size}; lower batch_size or set drop_last=False")
    return data, steps if steps is not None else 1


@torch.no_grad()
def evaluate_any(model: nn.Module, data: Any, loss_fn: LossFn | None, batch_size: int,
                 device: torch.device, precision: str = "fp32",
                 channels_last: bool = False) -> dict[str, float]:
    """`{"test_loss", "test_acc"}` on an `ImageDataset` or an iterable of batches; with a
    custom `loss_fn` only the mean loss (weighted by batch size) is known."""
    if data is None:
        return {}
    if is_image_dataset(data) and loss_fn is None:
        r = evaluate(model, data, batch_size, device, precision=precision,
                     channels_last=channels_last)
        return {"test_loss": r["loss"], "test_acc": r["acc"]}
    if is_image_dataset(data):
        from rankwise.data import BatchLoader

        data = BatchLoader(data, batch_size=batch_size, shuffle=False, augment=False,
                           device=device, seed=0, drop_last=False)
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    try:
        for batch in data:
            batch = to_device(batch, device)
            with autocast(device, precision):
                if loss_fn is not None:
                    loss = loss_fn(model, batch)
                else:
                    x, y = batch
                    logits = model(x).float()
                    loss = F.cross_entropy(logits, y)
                    correct += int((logits.argmax(1) == y).sum())
            k = batch_size_of(batch)
            loss_sum += float(loss) * k
            n += k
    finally:
        model.train(was_training)
    out = {"test_loss": loss_sum / n if n else float("nan")}
    if loss_fn is None:
        out["test_acc"] = correct / n if n else float("nan")
    return out


__all__ = ["LossFn", "batch_size_of", "evaluate_any", "is_image_dataset",
           "make_train_loader", "steps_in", "to_device"]
