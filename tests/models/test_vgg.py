"""CIFAR VGG-16-BN: layer structure and parameter count by hand."""

from __future__ import annotations

import torch

from rankwise.models import create_model


def test_vgg16_structure_and_count() -> None:
    model = create_model("vgg16")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
    assert isinstance(model.classifier, torch.nn.Linear) and model.classifier.in_features == 512
    widths = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    conv = sum(a * b * 9 for a, b in zip(widths[:-1], widths[1:], strict=True))
    bn = 2 * sum(widths[1:])
    assert conv == 14_710_464
    assert sum(p.numel() for p in model.parameters()) == conv + bn + 512 * 10 + 10
