"""Tucker2Conv2d: exactness, HOSVD error bounds, counting, specs, errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rankwise.errors import RankError, UnsupportedLayerError
from rankwise.layers import FORMATS, layer_from_spec
from rankwise.layers.shapes import ConvSpec, LinearSpec
from rankwise.layers.tucker2_conv import Tucker2Conv2d
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


def test_registered():
    assert FORMATS["tucker2"] is Tucker2Conv2d


@pytest.mark.parametrize("case", EXPLICIT_CASES, ids=case_id)
def test_full_rank_reproduces_dense_float64(case: ConvCase):
    conv = case.make(torch.float64)
    spec = ConvSpec.from_conv(conv)
    layer = Tucker2Conv2d.from_dense(conv, Tucker2Conv2d.max_rank(spec), name="features.3")
    x = case.input(dtype=torch.float64)
    assert rel_err(layer(x), conv(x)) < 1e-10
    assert rel_err(layer.dense_weight(), conv.weight) < 1e-10
    assert rel_err(layer.to_dense()(x), conv(x)) < 1e-10


@pytest.mark.parametrize("case", EXPLICIT_CASES[:3] + EXPLICIT_CASES[-2:], ids=case_id)
def test_full_rank_reproduces_dense_float32(case: ConvCase):
    conv = case.make(torch.float32)
    layer = Tucker2Conv2d.from_dense(conv, Tucker2Conv2d.max_rank(ConvSpec.from_conv(conv)))
    assert all(p.dtype == torch.float32 for p in layer.parameters())
    x = case.input(dtype=torch.float32)
    assert rel_err(layer(x), conv(x)) < 1e-5


def test_max_rank_by_hand():
    assert Tucker2Conv2d.max_rank(ConvSpec.from_conv(nn.Conv2d(16, 32, 3))) == (32, 16)
    # 1×1 conv 2→16: the mode-0 unfolding (16, 2) has rank ≤ 2
    assert Tucker2Conv2d.max_rank(ConvSpec.from_conv(nn.Conv2d(2, 16, 1))) == (2, 2)
    # per group: n_g = 6, c_g = 2
    assert Tucker2Conv2d.max_rank(ConvSpec.from_conv(nn.Conv2d(6, 18, 3, groups=3))) == (6, 2)


def test_counts_by_hand():
    spec = ConvSpec.from_conv(nn.Conv2d(16, 32, 3, stride=2, padding=1))
    r_o, r_i = 8, 4
    params, macs = Tucker2Conv2d.cost(spec, (r_o, r_i), (32, 32))
    assert params == 16 * r_i + r_i * r_o * 9 + r_o * 32 + 32
    # first 1×1 at 32×32, core and last at 16×16
    assert macs == 32 * 32 * r_i * 16 + 16 * 16 * r_o * r_i * 9 + 16 * 16 * 32 * r_o
    assert Tucker2Conv2d.cost(spec, (r_o, r_i))[1] == 16 * r_i + r_o * r_i * 9 + 32 * r_o
    layer = Tucker2Conv2d.from_spec(spec, (r_o, r_i))
    assert layer.params() == numel(layer) == params
    assert layer.macs((32, 32)) == hook_macs(layer, torch.randn(1, 16, 32, 32)) == macs


def test_grouped_counts_by_hand():
    spec = ConvSpec.from_conv(nn.Conv2d(8, 12, (3, 2), padding=(1, 0), groups=2, bias=False))
    r_o, r_i = 3, 2  # per group
    params, macs = Tucker2Conv2d.cost(spec, (r_o, r_i), (5, 6))  # output 5×5
    assert params == 8 * r_i + 2 * r_o * r_i * 6 + 12 * r_o
    assert macs == 5 * 6 * 2 * r_i * 4 + 5 * 5 * 2 * r_o * r_i * 6 + 5 * 5 * 12 * r_o
    layer = Tucker2Conv2d.from_spec(spec, (r_o, r_i))
    assert numel(layer) == params
    assert hook_macs(layer, torch.randn(1, 8, 5, 6)) == macs


@settings(max_examples=25, deadline=None)
@given(case=conv_cases(), fo=st.floats(0.0, 1.0), fi=st.floats(0.0, 1.0))
def test_properties(case: ConvCase, fo: float, fi: float):
    conv = case.make(torch.float64)
    spec = ConvSpec.from_conv(conv)
    limit = Tucker2Conv2d.max_rank(spec)
    rank = (1 + round(fo * (limit[0] - 1)), 1 + round(fi * (limit[1] - 1)))
    layer = Tucker2Conv2d.from_dense(conv, rank, name="block.conv")
    x = case.input(dtype=torch.float64)
    y = layer(x)
    assert y.shape == conv(x).shape
    assert rel_err(layer.to_dense()(x), y) < 1e-10
    params, macs = Tucker2Conv2d.cost(spec, rank, case.input_hw)
    assert layer.params() == numel(layer) == params
    assert layer.macs(case.input_hw) == hook_macs(layer, x) == macs
    # HOSVD error bounds, with the (group-pooled) spectra the rank policies read
    s0, s1 = Tucker2Conv2d.spectra(conv.weight, spec)
    assert (s0.numel(), s1.numel()) == limit
    e0, e1 = float(s0[rank[0]:].pow(2).sum()), float(s1[rank[1]:].pow(2).sum())
    err2 = float((layer.dense_weight() - conv.weight).pow(2).sum())
    tol = 1e-9 * float(conv.weight.pow(2).sum())
    assert max(e0, e1) - tol <= err2 <= e0 + e1 + tol
    # spec round trip through JSON: same type, rank, shapes and counts
    d = json_round_trip(layer.spec())
    fresh = layer_from_spec(d)
    assert type(fresh) is Tucker2Conv2d and fresh.rank == rank
    assert fresh.dense_spec == spec
    assert numel(fresh) == params
    assert fresh(x.float()).shape == y.shape


def test_hooi_option_not_worse():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 10, 3, padding=1).double()
    hosvd = Tucker2Conv2d.from_dense(conv, (3, 3))
    hooi = Tucker2Conv2d.from_dense(conv, (3, 3), n_iter=5)
    e_hosvd = float((hosvd.dense_weight() - conv.weight).norm())
    e_hooi = float((hooi.dense_weight() - conv.weight).norm())
    assert e_hooi <= e_hosvd + 1e-12


def test_single_group_spectra_are_unfolding_singular_values():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 2, dtype=torch.float64)
    s0, s1 = Tucker2Conv2d.spectra(w, ConvSpec.from_conv(nn.Conv2d(4, 6, (3, 2))))
    assert torch.allclose(s0, torch.linalg.svdvals(w.reshape(6, -1)))
    assert torch.allclose(s1, torch.linalg.svdvals(w.transpose(0, 1).reshape(4, -1)))


def test_backward_and_bias():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    layer = Tucker2Conv2d.from_dense(conv, (3, 2))
    assert torch.equal(layer.bias, conv.bias)
    layer(torch.randn(2, 4, 5, 5)).square().sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
    no_bias = Tucker2Conv2d.from_dense(nn.Conv2d(4, 6, 3, bias=False), (3, 2))
    assert no_bias.bias is None and no_bias.to_dense().bias is None
    assert "rank=(3, 2)" in repr(layer)


@pytest.mark.parametrize("rank", [3, (3,), (3, 2, 1), (0, 2), (2, 0), (7, 2), (2, 5), (2.0, 1)])
def test_rank_errors_name_the_layer_and_limit(rank):
    conv = nn.Conv2d(4, 6, 3)  # limit (6, 4)
    with pytest.raises(RankError) as e:
        Tucker2Conv2d.from_dense(conv, rank, name="layer1.0.conv2")
    assert "layer1.0.conv2" in str(e.value) and "(6, 4)" in str(e.value)
    with pytest.raises(RankError):
        Tucker2Conv2d.from_spec(ConvSpec.from_conv(conv), rank)


def test_unsupported_layers():
    with pytest.raises(UnsupportedLayerError, match="fc"):
        Tucker2Conv2d.from_dense(nn.Linear(4, 4), (1, 1), name="fc")
    with pytest.raises(UnsupportedLayerError):
        Tucker2Conv2d.from_spec(LinearSpec(4, 4), (1, 1))
    with pytest.raises(TypeError):
        Tucker2Conv2d.from_dense(nn.Conv2d(2, 2, 1), (1, 1), bogus=1)
