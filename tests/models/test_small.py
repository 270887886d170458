"""LeNet-5, small CNN and MLP: parameter counts by hand, options."""

from __future__ import annotations

import torch

from rankwise.models import create_model


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_lenet5_count() -> None:
    # conv 1->6 5x5: 150+6; conv 6->16: 2400+16; fc 400->120: 48000+120; 120->84: 10080+84;
    # 84->10: 840+10  => 61,706
    assert _params(create_model("lenet5")) == 61_706
    model = create_model("lenet5", image_size=32, in_channels=3)  # classic: no padding
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_mlp_hidden() -> None:
    model = create_model("mlp", hidden=(50,), num_classes=3)
    assert _params(model) == 784 * 50 + 50 + 50 * 3 + 3
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [50, 3]
    assert create_model("mlp", hidden=[]).net[1].in_features == 784


def test_smallcnn_width() -> None:
    model = create_model("smallcnn", width=4, hidden=16)
    # conv 1->4: 36, BN 8, conv 4->8: 288, BN 16, fc 8*7*7->16: 6272+16, fc 16->10: 160+10
    assert _params(model) == 36 + 8 + 288 + 16 + 6272 + 16 + 170
