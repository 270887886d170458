"""ImageNet ResNet-18/50: torchvision's parameter counts and layer names."""

from __future__ import annotations

import torch

from rankwise.models import create_model


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_at_1000_classes() -> None:
    # the counts torchvision documents for resnet18 / resnet50 (IMAGENET1K_V1 weights)
    assert _params(create_model("resnet18", num_classes=1000)) == 11_689_512
    assert _params(create_model("resnet50", num_classes=1000)) == 25_557_032


def test_torchvision_names_and_strides() -> None:
    model = create_model("resnet50", num_classes=1000)
    names = dict(model.named_parameters())
    assert names["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert names["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert names["fc.weight"].shape == (1000, 2048)
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)


def test_forward_small_input_and_narrow_width() -> None:
    model = create_model("resnet18", num_classes=7, width=8).eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    model = create_model("resnet50", num_classes=3, in_channels=1, width=8).eval()
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 3)
