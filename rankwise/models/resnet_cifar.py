"""CIFAR ResNets of He et al. 2016 ("Deep Residual Learning", Sec. 4.2): ResNet-20/32/44/56/110.

Depth 6n+2: a 3x3 conv (16 channels), three stages of n BasicBlocks with 16/32/64 channels
(stride 2 at the start of stages 2 and 3), global average pooling and one linear layer.
Shortcuts are **option A**: identity, or at a stage change a strided identity (every other pixel)
with the new channels zero-padded, so shortcuts have no parameters (ResNet-20: 0.27M params).
This is the standard BasicBlock ResNet-56, not the Bottleneck/option-B variant of TRP's code.
`width` (default 16) scales the stages to width/2·width/4·width for narrow or wide variants.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rankwise.errors import ConfigError


class ShortcutA(nn.Module):
    """Parameter-free shortcut: x[:, :, ::stride, ::stride] with channels zero-padded to `out`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ConfigError(f"ShortcutA: cannot shrink {in_channels} -> {out_channels} channels")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) -> (B, out, ceil(H/stride), ceil(W/stride))."""
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        extra = self.out_channels - self.in_channels
        if extra:
            x = F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))
        return x

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ShortcutA(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: (B, in_channels, H, W) -> logits (B, num_classes)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3,
                 width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ConfigError(f"CIFAR ResNet depth {depth}: must be 6n+2 with n >= 1 "
                              f"(20, 32, 44, 56, 110)")
        if width < 1:
            raise ConfigError(f"CIFAR ResNet width {width}: must be >= 1")
        n = (depth - 2) // 6
        widths = (width, 2 * width, 4 * width)
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages = []
        prev = width
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(prev, w, 2 if (i > 0 and j == 0) else 1))
                prev = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out" if isinstance(m, nn.Conv2d)
                                        else "fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def _factory(depth: int):
    def make(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> CifarResNet:
        return CifarResNet(depth, num_classes, in_channels, width)

    make.__name__ = f"resnet{depth}"
    make.__doc__ = f"ResNet-{depth} for CIFAR (He et al. 2016, BasicBlock, option A shortcuts)."
    return make


resnet20, resnet32, resnet44, resnet56, resnet110 = (_factory(d) for d in (20, 32, 44, 56, 110))

MODELS = {f"resnet{d}": (_factory(d), (3, 32, 32)) for d in (20, 32, 44, 56, 110)}
