import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rankwise.errors import UnsupportedLayerError
from rankwise.layers.shapes import (
    ConvSpec,
    LinearSpec,
    conv2d_macs,
    conv2d_output_hw,
    conv2d_params,
    linear_macs,
    linear_params,
)


def test_conv_counts_by_hand():
    # 3x3 conv 16->32, stride 2, pad 1 on 32x32: out 16x16.
    spec = ConvSpec.from_conv(nn.Conv2d(16, 32, 3, stride=2, padding=1))
    assert conv2d_output_hw(spec, (32, 32)) == (16, 16)
    assert conv2d_params(spec) == 32 * 16 * 9 + 32
    assert conv2d_macs(spec, (32, 32)) == 16 * 16 * 32 * 16 * 9


def test_grouped_dilated_non_square_by_hand():
    conv = nn.Conv2d(8, 12, (3, 5), padding=(2, 1), dilation=(2, 1), groups=4, bias=False)
    spec = ConvSpec.from_conv(conv)
    # H: 10 + 4 - (2*2+1) + 1 = 10 ; W: 9 + 2 - 5 + 1 = 7
    assert conv2d_output_hw(spec, (10, 9)) == (10, 7)
    assert conv2d_params(spec) == 12 * 2 * 15
    assert conv2d_macs(spec, (10, 9)) == 10 * 7 * 12 * 2 * 15


def test_linear_counts_by_hand():
    spec = LinearSpec.from_linear(nn.Linear(64, 10))
    assert linear_params(spec) == 650
    assert linear_macs(spec) == 640
    assert linear_macs(spec, tokens=5) == 3200


def test_rejects_wrong_layer_types():
    with pytest.raises(UnsupportedLayerError):
        ConvSpec.from_conv(nn.Linear(2, 3))
    with pytest.raises(UnsupportedLayerError):
        LinearSpec.from_linear(nn.Conv2d(2, 3, 1))


@settings(max_examples=40, deadline=None)
@given(
    c=st.integers(1, 4), n=st.integers(1, 4), g=st.sampled_from([1, 2]),
    kh=st.integers(1, 4), kw=st.integers(1, 4), s=st.integers(1, 3), p=st.integers(0, 2),
    d=st.integers(1, 2), h=st.integers(8, 12), w=st.integers(8, 12),
    same=st.booleans(), bias=st.booleans(),
)
def test_spec_matches_pytorch(c, n, g, kh, kw, s, p, d, h, w, same, bias):
    padding = "same" if same else p
    stride = 1 if same else s
    conv = nn.Conv2d(c * g, n * g, (kh, kw), stride=stride, padding=padding, dilation=d,
                     groups=g, bias=bias)
    spec = ConvSpec.from_conv(conv)
    assert ConvSpec.from_dict(spec.to_dict()) == spec
    out = conv(torch.zeros(1, c * g, h, w))
    assert conv2d_output_hw(spec, (h, w)) == tuple(out.shape[-2:])
    assert conv2d_params(spec) == sum(p.numel() for p in conv.parameters())
    rebuilt = spec.make()
    assert rebuilt.weight.shape == conv.weight.shape and (rebuilt.bias is None) == (not bias)
