"""The default optimizer: SGD with momentum, optionally without weight decay on BN and biases."""

from __future__ import annotations

import torch
from torch import nn

from rankwise.train.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float,
                 wd_on_bn_bias: bool = True) -> list[dict[str, object]]:
    """Parameter groups for an optimizer: one group, or (decay, no-decay) where tensors with
    `ndim <= 1` (BatchNorm weights/biases, every bias) get `weight_decay=0`."""
    params = [p for p in model.parameters() if p.requires_grad]
    if wd_on_bn_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_sgd(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD(lr, momentum, nesterov, weight decay) as configured by `cfg`."""
    groups = param_groups(model, cfg.weight_decay, cfg.wd_on_bn_bias)
    return torch.optim.SGD([g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
