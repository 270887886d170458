"""VGG-16 with BatchNorm for CIFAR (32x32): 13 conv3x3-BN-ReLU, 5 max-pools, Linear(512, K).

The CIFAR variant (as in network-slimming / TRP-style repos): after five pools the map is 1x1,
so the classifier is a single 512 -> num_classes linear layer. `width` (default 64) scales every
conv (64-128-256-512-512 at width 64).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from rankwise.errors import ConfigError

CFG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """(B, in_channels, 32, 32) -> logits (B, num_classes); `features` then `classifier`."""

    def __init__(self, cfg: tuple = CFG16, num_classes: int = 10, in_channels: int = 3,
                 width: int = 64) -> None:
        super().__init__()
        if width < 1:
            raise ConfigError(f"VGG width {width}: must be >= 1")
        layers: list[nn.Module] = []
        prev = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out = max(1, int(item) * width // 64)
            layers += [nn.Conv2d(prev, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            prev = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(prev, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg16(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> VGG:
    """CIFAR VGG-16-BN (14.7M params at width 64, 10 classes)."""
    return VGG(CFG16, num_classes, in_channels, width)


MODELS = {"vgg16": (vgg16, (3, 32, 32))}
