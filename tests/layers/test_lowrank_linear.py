import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rankwise.errors import RankError, UnsupportedLayerError
from rankwise.layers import FORMATS, LinearSpec, layer_from_spec
from rankwise.layers.lowrank_linear import LowRankLinear
from tests.layers.cases import hook_macs, json_round_trip, numel, rel_err


def _linear(i: int, o: int, bias: bool = True, dtype=torch.float64, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(i, o, bias=bias).to(dtype)
    if bias:
        with torch.no_grad():
            lin.bias.normal_()
    return lin


def test_registered():
    assert FORMATS["svd"] is LowRankLinear
    assert LowRankLinear.dense_type is nn.Linear


@pytest.mark.parametrize("i,o", [(12, 7), (7, 12), (9, 9), (1, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_full_rank_is_exact(i, o, bias):
    dense = _linear(i, o, bias)
    spec = LinearSpec.from_linear(dense)
    assert LowRankLinear.max_rank(spec) == (min(i, o),)
    lr = LowRankLinear.from_dense(dense, min(i, o))
    x = torch.randn(3, 4, i, dtype=torch.float64)  # extra leading dims pass through
    assert rel_err(lr(x), dense(x)) <= 1e-10
    dense32 = _linear(i, o, bias, dtype=torch.float32)
    lr32 = LowRankLinear.from_dense(dense32, min(i, o))
    assert rel_err(lr32(x.float()), dense32(x.float())) <= 1e-5


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_eckart_young_error(rank):
    dense = _linear(10, 8)
    lr = LowRankLinear.from_dense(dense, rank)
    w = dense.weight.detach()
    sigma = torch.linalg.svdvals(w)
    expected = sigma[rank:].square().sum().sqrt()
    err = (w - lr.dense_weight()).norm()
    assert torch.allclose(err, expected, rtol=1e-9, atol=1e-12)
    # rank-r reconstruction really has rank r
    assert torch.linalg.matrix_rank(lr.dense_weight()) == rank


def test_balanced_scaling():
    lr = LowRankLinear.from_dense(_linear(10, 8), 5)
    u, v = lr.second.weight.detach(), lr.first.weight.detach()  # (8, 5), (5, 10)
    # U = U_r √S, V = √S V_rᵀ  =>  UᵀU = V Vᵀ = diag(S)
    assert torch.allclose(u.T @ u, v @ v.T, atol=1e-10)
    assert torch.allclose(u.T @ u, torch.diag(torch.diagonal(u.T @ u)), atol=1e-10)


def test_factors_keep_dtype_and_device():
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        lr = LowRankLinear.from_dense(_linear(6, 4, dtype=dtype), 2)
        for p in lr.parameters():
            assert p.dtype == dtype and p.device.type == "cpu"


def test_counts_by_hand():
    spec = LinearSpec(64, 10, bias=True)
    # r·in + out·r + out ; MACs r·in + out·r
    assert LowRankLinear.cost(spec, 4) == (4 * 64 + 10 * 4 + 10, 4 * 64 + 10 * 4)
    assert LowRankLinear.cost(LinearSpec(64, 10, bias=False), 4) == (296, 296)
    lr = LowRankLinear.from_spec(spec, 4)
    assert lr.params() == numel(lr) == 306
    assert lr.macs() == lr.macs((32, 32)) == hook_macs(lr, torch.randn(2, 64)) == 296


def test_to_dense_and_bias():
    dense = _linear(9, 5)
    lr = LowRankLinear.from_dense(dense, 3)
    back = lr.to_dense()
    assert isinstance(back, nn.Linear) and back.weight.dtype == torch.float64
    x = torch.randn(4, 9, dtype=torch.float64)
    assert rel_err(back(x), lr(x)) <= 1e-12
    assert torch.equal(lr.bias, dense.bias.detach())
    assert LowRankLinear.from_dense(_linear(9, 5, bias=False), 3).bias is None


def test_from_dense_leaves_dense_untouched_and_trains():
    dense = _linear(6, 4)
    before = dense.weight.detach().clone()
    lr = LowRankLinear.from_dense(dense, 2)
    lr(torch.randn(3, 6, dtype=torch.float64)).sum().backward()
    assert torch.equal(dense.weight, before)
    assert all(p.grad is not None for p in lr.parameters())
    assert lr.first.weight.data_ptr() != dense.weight.data_ptr()


def test_spectra():
    dense = _linear(7, 11)
    (s,) = LowRankLinear.spectra(dense.weight, LinearSpec.from_linear(dense))
    assert s.shape == (7,)
    assert torch.all(s[:-1] >= s[1:])
    assert torch.allclose(s.square().sum(), dense.weight.detach().square().sum())


def test_rank_errors_name_layer_max_and_fix():
    dense = _linear(12, 5)
    for bad in (0, -1, 6):
        with pytest.raises(RankError) as e:
            LowRankLinear.from_dense(dense, bad, name="head.fc")
        msg = str(e.value)
        assert "head.fc" in msg and "5" in msg and "between 1 and 5" in msg
    for bad in (2.0, "3", True, None, (1, 2)):
        with pytest.raises(RankError, match="head.fc"):
            LowRankLinear.from_dense(dense, bad, name="head.fc")
    with pytest.raises(RankError, match=r"Linear\(12, 5"):
        LowRankLinear.from_dense(dense, 9)  # no name: the layer's shape
    with pytest.raises(RankError):
        LowRankLinear.from_spec(LinearSpec(12, 5), 6)
    with pytest.raises(RankError):
        LowRankLinear.cost(LinearSpec(12, 5), 0)


def test_one_tuple_rank_accepted():
    lr = LowRankLinear.from_dense(_linear(6, 4), (3,))
    assert lr.rank == 3 and isinstance(lr.rank, int)


def test_unsupported_layers():
    with pytest.raises(UnsupportedLayerError, match="blocks.0.conv"):
        LowRankLinear.from_dense(nn.Conv2d(3, 4, 1), 1, name="blocks.0.conv")
    with pytest.raises(UnsupportedLayerError):
        LowRankLinear.from_dense(nn.LazyLinear(4), 1)
    from rankwise.layers import ConvSpec

    with pytest.raises(UnsupportedLayerError):
        LowRankLinear.max_rank(ConvSpec(3, 4, (1, 1)))
    with pytest.raises(UnsupportedLayerError):
        LowRankLinear.spectra(torch.randn(3, 3), LinearSpec(4, 3))


def test_repr_is_readable():
    text = repr(LowRankLinear.from_spec(LinearSpec(16, 8), 3))
    assert "16 -> 8" in text and "rank=3" in text and "max 8" in text


@settings(max_examples=25, deadline=None)
@given(
    i=st.integers(1, 12), o=st.integers(1, 12), bias=st.booleans(), data=st.data(),
)
def test_properties(i, o, bias, data):
    dense = _linear(i, o, bias)
    spec = LinearSpec.from_linear(dense)
    (m,) = LowRankLinear.max_rank(spec)
    r = data.draw(st.integers(1, m), label="rank")
    lr = LowRankLinear.from_dense(dense, r, name="fc")
    x = torch.randn(3, i, dtype=torch.float64)
    y = lr(x)
    assert y.shape == dense(x).shape
    assert rel_err(lr.to_dense()(x), y) <= 1e-10
    assert LowRankLinear.cost(spec, r) == (numel(lr), hook_macs(lr, x))
    if r == m:
        assert rel_err(y, dense(x)) <= 1e-10
    d = json_round_trip(lr.spec())
    assert d["format"] == "svd" and d["rank"] == r
    fresh = layer_from_spec(d)
    assert type(fresh) is LowRankLinear and fresh.rank == r
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in lr.state_dict().items()
    }
    assert fresh.params() == lr.params() == numel(fresh)
    assert fresh(x.float()).shape == y.shape
    json.dumps(d)


def test_weight_property_reads_like_a_linear():
    dense = _linear(10, 6)
    lr = LowRankLinear.from_dense(dense, 6)
    assert lr.weight.shape == (6, 10) and lr.in_features == 10 and lr.out_features == 6
    assert torch.allclose(lr.weight, dense.weight, atol=1e-10)
    x = torch.randn(3, 10, dtype=torch.float64)
    # code that calls F.linear(x, layer.weight, layer.bias) gets the same answer as forward
    assert torch.allclose(torch.nn.functional.linear(x, lr.weight, lr.bias), lr(x), atol=1e-12)
    lr.weight.sum().backward()  # differentiable w.r.t. the factors
    assert lr.first.weight.grad is not None
    assert "weight" not in dict(lr.named_parameters())
    with pytest.raises(KeyError):
        lr.weight = nn.Parameter(torch.zeros(6, 10))
