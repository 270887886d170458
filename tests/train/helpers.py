"""Tiny models and synthetic datasets shared by the trainer tests."""

from __future__ import annotations

import torch
from torch import nn

from rankwise.data import load_dataset

SHAPE = (3, 8, 8)
CLASSES = 4


def tiny_cnn(seed: int = 0, bn: bool = True, dropout: float = 0.0) -> nn.Module:
    """conv3x3(3→8) [+BN] → ReLU → global pool [→ dropout] → linear(8→4); ~300 params."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 8, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(8))
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))  # draws from the global torch RNG
    layers.append(nn.Linear(8, CLASSES))
    return nn.Sequential(*layers)


def synthetic(train: bool, size: int) -> object:
    return load_dataset("synthetic", train, size=size, shape=SHAPE, num_classes=CLASSES, seed=0)
