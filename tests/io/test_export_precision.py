"""Deployment in fp32 / bf16: exact BN folding, bf16 within bf16 tolerance, reload works."""

import pytest
import torch
from torch import nn

from rankwise.errors import CheckpointError, ConfigError
from rankwise.io.export_precision import (
    DeployedModel,
    fold_batchnorm,
    load_deploy,
    save_deploy,
    to_deploy,
)
from rankwise.io.model_file import save
from rankwise.layers import FORMATS
from rankwise.models import create_model


def model_with_stats(seed: int = 0) -> nn.Module:
    """resnet20 at width 4 with non-trivial BN statistics and affine parameters, eval mode."""
    torch.manual_seed(seed)
    m = create_model("resnet20", width=4)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.2, 0.2)
    return m.eval()


def test_folding_is_exact_and_removes_every_conv_fed_batchnorm():
    m = model_with_stats()
    x = torch.randn(2, 3, 16, 16)
    ref = m(x)
    n_bn = sum(isinstance(b, nn.BatchNorm2d) for b in m.modules())
    assert fold_batchnorm(m) == n_bn == 19  # resnet20: stem + 2 per block × 9
    assert not any(isinstance(b, nn.BatchNorm2d) for b in m.modules())
    assert torch.allclose(m(x), ref, rtol=1e-4, atol=1e-5)


def test_folding_into_a_factorized_layer_uses_its_last_sub_conv():
    m = model_with_stats()
    conv = m.layer1[0].conv1
    m.layer1[0].conv1 = FORMATS["tucker2"].from_dense(conv, (2, 2))
    m.layer1[1].conv1 = FORMATS["channel"].from_dense(m.layer1[1].conv1, 2)
    x = torch.randn(2, 3, 16, 16)
    ref = m(x)
    assert fold_batchnorm(m) == 19
    assert m.layer1[0].conv1.last.bias is not None and m.layer1[1].conv1.second.bias is not None
    assert torch.allclose(m(x), ref, rtol=1e-4, atol=1e-5)


def test_training_mode_bn_and_untraceable_models_are_left_alone():
    m = model_with_stats().train()
    assert fold_batchnorm(m) == 0

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.bn(self.conv(x))
            return x

    assert fold_batchnorm(Branchy().eval()) == 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_deployed_outputs_within_tolerance_of_fp32_and_caller_model_untouched(precision):
    m = model_with_stats()
    x = torch.randn(4, 3, 16, 16)
    ref = m(x)
    d = to_deploy(m, precision)
    y = d(x)
    assert isinstance(d, DeployedModel) and y.dtype == torch.float32 and y.shape == ref.shape
    tol = 1e-4 if precision == "fp32" else 3e-2  # bf16 keeps 8 mantissa bits: ~0.4 % per op
    assert (y - ref).abs().max() <= tol * ref.abs().max()
    assert next(d.model.parameters()).dtype == (torch.float32 if precision == "fp32"
                                                else torch.bfloat16)
    assert any(isinstance(b, nn.BatchNorm2d) for b in m.modules())  # the original keeps its BN
    assert next(m.parameters()).dtype == torch.float32


def test_save_and_reload_deploys_with_the_saved_settings(tmp_path):
    m = model_with_stats()
    x = torch.randn(2, 3, 16, 16)
    save_deploy(m, tmp_path / "d", precision="bf16", arch="resnet20",
                arch_kwargs={"width": 4}, meta={"note": "kept"})
    again = load_deploy(tmp_path / "d", model=create_model("resnet20", width=4))
    assert again.settings() == {"precision": "bf16", "channels_last": True, "fold_bn": True}
    assert torch.equal(again(x), to_deploy(m, "bf16")(x))
    fp32 = load_deploy(tmp_path / "d", model=create_model("resnet20", width=4), precision="fp32")
    assert fp32.precision == "fp32" and torch.allclose(fp32(x), m(x), rtol=1e-4, atol=1e-5)
    save(m, tmp_path / "plain", arch="resnet20", arch_kwargs={"width": 4})
    with pytest.raises(CheckpointError, match="save_deploy"):
        load_deploy(tmp_path / "plain")
    with pytest.raises(ConfigError):
        save_deploy(to_deploy(m, "fp32"), tmp_path / "bad")
    with pytest.raises(ConfigError):
        to_deploy(m, "fp16")
