"""DecoupledConv2d (format "nd", network decoupling): exactness, truncation, counting, spec."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from torch import nn

from rankwise.errors import RankError
from rankwise.layers import FORMATS, ConvSpec, layer_from_spec
from rankwise.layers.decoupled_conv import DecoupledConv2d
from tests.layers.cases import (
    EXPLICIT_CASES,
    ConvCase,
    case_id,
    conv_cases,
    hook_macs,
    json_round_trip,
    numel,
    rel_err,
)

Cls = DecoupledConv2d
pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")


def test_registered_and_max_rank_by_hand():
    assert FORMATS["nd"] is Cls and Cls.dense_type is nn.Conv2d
    assert Cls.max_rank(ConvSpec(16, 32, (3, 3))) == (9,)  # min(16, 9)
    assert Cls.max_rank(ConvSpec(4, 64, (3, 3))) == (4,)
    assert Cls.max_rank(ConvSpec(8, 12, (3, 5), groups=4)) == (2,)  # min(8/4, 15)


@pytest.mark.parametrize("case", EXPLICIT_CASES, ids=case_id)
def test_full_rank_reproduces_dense_conv(case: ConvCase):
    conv = case.make()
    layer = Cls.from_dense(conv, Cls.max_rank(ConvSpec.from_conv(conv))[0])
    x = case.input()
    assert rel_err(layer(x), conv(x)) < 1e-10
    assert rel_err(layer.dense_weight(), conv.weight) < 1e-10


@settings(max_examples=25, deadline=None)
@given(conv_cases())
def test_full_rank_exact_over_stride_padding_dilation_groups(case: ConvCase):
    conv = case.make()
    layer = Cls.from_dense(conv, Cls.max_rank(ConvSpec.from_conv(conv))[0])
    x = case.input()
    assert rel_err(layer(x), conv(x)) < 1e-10
    assert layer.params() == numel(layer)
    assert layer.macs(case.input_hw) == hook_macs(layer, x)


def test_truncation_is_the_per_filter_svd():
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 3, 3, padding=1, bias=False).double()
    r = 2
    layer = Cls.from_dense(conv, r)
    for i in range(3):
        m = conv.weight[i].detach().reshape(5, 9)
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        best = (u[:, :r] * s[:r]) @ vh[:r]
        assert torch.allclose(layer.dense_weight()[i].reshape(5, 9), best, atol=1e-12)
    # the error left equals the pooled tail of the spectra (`spectra`)
    s = Cls.spectra(conv.weight, ConvSpec.from_conv(conv))[0]
    err = (layer.dense_weight() - conv.weight).detach().norm()
    assert float(err) == pytest.approx(float(s[r:].square().sum().sqrt()), rel=1e-9)


def test_counts_by_hand():
    spec = ConvSpec(16, 32, (3, 3), padding=(1, 1))
    params, per_pixel = Cls.cost(spec, 4)
    assert params == 32 * 4 * 16 + 32 * 4 * 9 + 32  # + bias
    assert per_pixel == (32 * 16 + 32 * 9) * 4  # TRP's ND formula
    _, macs = Cls.cost(spec, 4, (8, 8))
    assert macs == 32 * 4 * 16 * 64 + 32 * 4 * 9 * 64


def test_rank_out_of_range_and_spec_round_trip():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    with pytest.raises(RankError, match="nd"):
        Cls.from_dense(conv, 10)
    layer = Cls.from_dense(conv, 3)
    back = layer_from_spec(json_round_trip(layer.spec()))
    assert isinstance(back, Cls) and back.rank == 3
    assert [p.shape for p in back.parameters()] == [p.shape for p in layer.parameters()]
