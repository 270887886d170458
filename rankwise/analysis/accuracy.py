"""`evaluate`: mean cross-entropy and top-1 accuracy of a classifier on a whole dataset."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from rankwise.analysis.precision import resolve_precision

PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """bfloat16 autocast on CPU or CUDA when `precision` is "bf16" (or "auto" where the device
    computes bf16 natively, `analysis.precision`), else a null context.

    Weights stay float32 (master weights); matmuls and convs run in bf16 inside the context.
    """
    if resolve_precision(precision, device) == "bf16" and device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, dataset, batch_size: int = 512,
             device: str | torch.device = "cpu", precision: str = "fp32",
             channels_last: bool = False) -> dict[str, float]:
    """`{"loss": mean CE (nats/sample), "acc": top-1 fraction in [0, 1], "n": samples}`.

    `dataset`: an `ImageDataset` (uint8 (N, C, H, W) images); batches come from a
    non-shuffled, non-augmented `BatchLoader`. The model runs in eval mode; its previous mode
    is restored afterwards.
    """
    from rankwise.data import BatchLoader

    device = torch.device(device)
    loader = BatchLoader(dataset, batch_size=batch_size, shuffle=False, augment=False,
                         device=device, seed=0, drop_last=False)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    try:
        for x, y in loader:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            n += int(y.shape[0])
    finally:
        model.train(was_training)
    if n == 0:
        return {"loss": float("nan"), "acc": float("nan"), "n": 0}
    return {"loss": float(loss_sum) / n, "acc": float(correct) / n, "n": n}
