"""Registry: every model builds, has the right output shape at its default input shape."""

from __future__ import annotations

import pytest
import torch

from rankwise.errors import ConfigError
from rankwise.models import create_model, default_input_shape, list_models

EXPECTED = {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "vgg16", "lenet5",
            "smallcnn", "mlp", "resnet18", "resnet50", "mlpmixer"}
SMALL_KW = {"resnet18": {"width": 8}, "resnet50": {"width": 8}, "vgg16": {"width": 16},
            "resnet110": {"width": 4}}


def test_list_models() -> None:
    assert set(list_models()) == EXPECTED and list_models() == sorted(list_models())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_forward_shape(name: str) -> None:
    torch.manual_seed(0)
    shape = default_input_shape(name)
    model = create_model(name, num_classes=7, **SMALL_KW.get(name, {})).eval()
    size = 64 if shape[1] == 224 else shape[1]  # keep the ImageNet nets fast
    x = torch.randn(3, shape[0], size, size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet20", "lenet5", "smallcnn", "mlp", "mlpmixer", "vgg16"])
def test_in_channels(name: str) -> None:
    c = 1 if default_input_shape(name)[0] == 3 else 3
    model = create_model(name, in_channels=c, **SMALL_KW.get(name, {})).eval()
    h = default_input_shape(name)[1]
    assert model(torch.randn(2, c, h, h)).shape == (2, 10)


def test_default_channels_follow_input_shape() -> None:
    assert default_input_shape("lenet5") == (1, 28, 28)
    assert default_input_shape("resnet20") == (3, 32, 32)
    assert default_input_shape("resnet50") == (3, 224, 224)
    assert create_model("lenet5").features[0].in_channels == 1
    assert create_model("resnet20").conv1.in_channels == 3


def test_errors_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="resnet20"):
        create_model("resnet21")
    with pytest.raises(ConfigError, match="width"):
        create_model("lenet5", width=3)
    with pytest.raises(ConfigError, match="resnet56"):
        default_input_shape("nope")
