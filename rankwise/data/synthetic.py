"""A learnable synthetic image dataset: class-dependent smooth patterns plus pixel noise."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rankwise.data.dataset import ImageDataset
from rankwise.errors import ConfigError


def make_synthetic(train: bool = True, size: int = 512, shape: tuple[int, int, int] = (3, 32, 32),
                   num_classes: int = 10, seed: int = 0, noise: float = 40.0,
                   contrast: float = 60.0) -> ImageDataset:
    """`size` uint8 images (C, H, W) whose label is recoverable from the pixels.

    Each class has a fixed smooth pattern (random (C, H/4, W/4) field, bilinearly upsampled) drawn
    from `seed`; an image is 128 + `contrast` * pattern[label] + N(0, `noise`²), clipped to 0..255.
    Train and test splits share the patterns and differ in labels and noise. Labels are uniform.
    """
    c, h, w = (int(s) for s in shape)
    if size < 0 or num_classes < 1 or min(c, h, w) < 1:
        raise ConfigError(f"synthetic: need size >= 0, num_classes >= 1 and positive shape, got "
                          f"size={size}, num_classes={num_classes}, shape={shape}")
    gen = torch.Generator().manual_seed(int(seed))
    coarse = torch.randn(num_classes, c, max(1, h // 4), max(1, w // 4), generator=gen)
    patterns = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    scale = patterns.flatten(1).std(dim=1, correction=0)
    patterns = patterns / torch.where(scale > 1e-6, scale, 1.0).view(-1, 1, 1, 1)
    sample_gen = torch.Generator().manual_seed(int(seed) * 2 + (1 if train else 2) + 10_007)
    labels = torch.randint(num_classes, (size,), generator=sample_gen)
    pixels = 128.0 + contrast * patterns[labels]
    pixels += noise * torch.randn(size, c, h, w, generator=sample_gen)
    images = pixels.round().clamp(0, 255).to(torch.uint8)
    return ImageDataset(images, labels.to(torch.int64), num_classes, (0.5,) * c, (0.3,) * c,
                        "synthetic")
