"""CIFAR ResNets (He et al. 2016, option A): parameter counts by hand, shortcut behaviour."""

from __future__ import annotations

import pytest
import torch

from rankwise.errors import ConfigError
from rankwise.models import create_model
from rankwise.models.resnet_cifar import CifarResNet, ShortcutA


def hand_count(depth: int, width: int = 16, num_classes: int = 10) -> int:
    """Parameters of ResNet-(6n+2) with option A shortcuts, counted from the paper's layout.

    conv1 3·w·9 + BN 2w; stage widths w, 2w, 4w with n blocks each; a block c_in -> c is
    c_in·c·9 + c·c·9 conv weights + 2·2c BN params; shortcuts have none; fc 4w·K + K.
    ResNet-20 (n=3, w=16, K=10):
      conv1 432 + bn 32                                          =     464
      stage1 3 x (2304 + 2304 + 64)                              =  14,016
      stage2 (4608 + 9216 + 128) + 2 x (9216 + 9216 + 128)       =  51,072
      stage3 (18432 + 36864 + 256) + 2 x (36864 + 36864 + 256)  = 203,520
      fc 64·10 + 10                                              =     650
      total                                                        269,722 (≈ 0.27M)
    ResNet-56 (n=9): 464 + 42,048 + 162,432 + 647,424 + 650 = 853,018 (≈ 0.85M).
    """
    n = (depth - 2) // 6
    total = 3 * width * 9 + 2 * width
    prev = width
    for c in (width, 2 * width, 4 * width):
        for _ in range(n):
            total += prev * c * 9 + c * c * 9 + 4 * c
            prev = c
    return total + prev * num_classes + num_classes


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet20_and_56_counts_match_the_hand_count() -> None:
    assert hand_count(20) == 269_722 and hand_count(56) == 853_018  # the docstring arithmetic
    assert _params(create_model("resnet20")) == 269_722
    assert _params(create_model("resnet56")) == 853_018


@pytest.mark.parametrize("depth", [32, 44, 110])
def test_other_depths(depth: int) -> None:
    model = create_model(f"resnet{depth}", num_classes=100)
    assert _params(model) == hand_count(depth, num_classes=100)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == depth - 1  # + the fc layer = depth weighted layers, no shortcut convs


@pytest.mark.parametrize("width", [4, 8, 32])
def test_width_variants(width: int) -> None:
    model = create_model("resnet20", width=width)
    assert _params(model) == hand_count(20, width)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_option_a_shortcut_is_strided_identity_with_zero_channels() -> None:
    x = torch.randn(2, 16, 8, 8)
    y = ShortcutA(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, :8]) == 0 and torch.count_nonzero(y[:, 24:]) == 0


def test_bad_depth_and_width() -> None:
    with pytest.raises(ConfigError, match="width 0"):
        create_model("resnet20", width=0)
    with pytest.raises(ConfigError, match="6n\\+2"):
        CifarResNet(depth=21)
