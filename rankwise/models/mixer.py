"""A tiny MLP-Mixer (Tolstikhin et al. 2021) built only from nn.Linear/LayerNorm: surgery tests.

Image (B, C, H, W) -> non-overlapping p x p patches (B, N, C·p·p) -> Linear embed (B, N, dim) ->
`depth` blocks of [LayerNorm, token-mixing MLP over N, residual; LayerNorm, channel-mixing MLP
over dim, residual] -> LayerNorm -> mean over tokens -> Linear head (B, num_classes).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rankwise.errors import ConfigError


class FeedForward(nn.Module):
    """Linear(dim, hidden) - GELU - Linear(hidden, dim) on the last axis."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class MixerBlock(nn.Module):
    """Token mixing (across the N patches) then channel mixing (across dim); (B, N, dim) kept."""

    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = FeedForward(tokens, token_hidden)
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = FeedForward(dim, channel_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class MLPMixer(nn.Module):
    """(B, in_channels, image_size, image_size) -> (B, num_classes); all weights in nn.Linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 patch: int = 4, dim: int = 64, depth: int = 2, token_hidden: int = 32,
                 channel_hidden: int = 128) -> None:
        super().__init__()
        if patch < 1 or image_size % patch:
            raise ConfigError(f"MLPMixer: image_size {image_size} must be a multiple of patch "
                              f"{patch}")
        if min(dim, depth, token_hidden, channel_hidden) < 1:
            raise ConfigError("MLPMixer: dim, depth, token_hidden, channel_hidden must be >= 1")
        self.patch = patch
        tokens = (image_size // patch) ** 2
        self.embed = nn.Linear(in_channels * patch * patch, dim)
        self.blocks = nn.Sequential(*(MixerBlock(tokens, dim, token_hidden, channel_hidden)
                                      for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)  # (B, N, C·p·p)
        x = self.blocks(self.embed(patches))
        return self.head(self.norm(x).mean(dim=1))


def mlpmixer(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, patch: int = 4,
             dim: int = 64, depth: int = 2, token_hidden: int = 32,
             channel_hidden: int = 128) -> MLPMixer:
    """Tiny MLP-Mixer for 32x32 inputs (64 tokens of 4x4 patches)."""
    return MLPMixer(num_classes, in_channels, image_size, patch, dim, depth, token_hidden,
                    channel_hidden)


MODELS = {"mlpmixer": (mlpmixer, (3, 32, 32))}
