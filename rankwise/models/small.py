"""Small models for 28x28 inputs (MNIST, Fashion-MNIST): LeNet-5, a small CNN, an MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from rankwise.errors import ConfigError


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling.

    conv5x5(6) - pool - conv5x5(16) - pool - fc120 - fc84 - fc(num_classes). For 28x28 inputs
    the first conv pads by 2 (the classic 32x32 input needs none), so the features are 16x5x5.
    (B, in_channels, image_size, image_size) -> (B, num_classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        pad = 2 if image_size < 32 else 0
        s = ((image_size + 2 * pad - 4) // 2 - 4) // 2
        if s < 1:
            raise ConfigError(f"LeNet5: image_size {image_size} too small (needs >= 16)")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * s * s, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes))
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    """Two conv3x3-BN-ReLU-maxpool stages (`width`, 2·`width` channels), fc 128, fc K.

    (B, in_channels, image_size, image_size) -> (B, num_classes); 28x28 -> 7x7 features.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32,
                 image_size: int = 28, hidden: int = 128) -> None:
        super().__init__()
        s = image_size // 4
        if s < 1 or width < 1:
            raise ConfigError(f"SmallCNN: image_size {image_size} (>= 4) and width {width} "
                              f"(>= 1) out of range")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * s * s, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes))
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """Flatten, then Linear-ReLU per entry of `hidden`, then Linear(num_classes).

    (B, in_channels, image_size, image_size) -> (B, num_classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 hidden: Sequence[int] = (256, 128)) -> None:
        super().__init__()
        if any(int(h) < 1 for h in hidden):
            raise ConfigError(f"MLP: hidden sizes {tuple(hidden)} must be >= 1")
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_channels * image_size * image_size
        for h in hidden:
            layers += [nn.Linear(prev, int(h)), nn.ReLU(inplace=True)]
            prev = int(h)
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def lenet5(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> LeNet5:
    """LeNet-5 (61,706 params for 1x28x28 inputs and 10 classes)."""
    return LeNet5(num_classes, in_channels, image_size)


def smallcnn(num_classes: int = 10, in_channels: int = 1, width: int = 32,
             image_size: int = 28, hidden: int = 128) -> SmallCNN:
    """Small 2-stage CNN for 28x28 inputs."""
    return SmallCNN(num_classes, in_channels, width, image_size, hidden)


def mlp(num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
        hidden: Sequence[int] = (256, 128)) -> MLP:
    """Fully connected network with `hidden` layer sizes."""
    return MLP(num_classes, in_channels, image_size, tuple(hidden))


MODELS = {"lenet5": (lenet5, (1, 28, 28)), "smallcnn": (smallcnn, (1, 28, 28)),
          "mlp": (mlp, (1, 28, 28))}
