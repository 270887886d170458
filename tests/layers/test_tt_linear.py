"""TTLinear: modes, exactness, TT-SVD error bound, counting, specs, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rankwise.errors import ConfigError, RankError, UnsupportedLayerError
from rankwise.layers import FORMATS, layer_from_spec
from rankwise.layers.shapes import ConvSpec, LinearSpec
from rankwise.layers.tt_linear import TTLinear, balanced_modes
from tests.layers.cases import json_round_trip, numel, rel_err


def _linear(i, o, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(i, o, bias=bias).double()
    if bias:
        with torch.no_grad():
            lin.bias.normal_()
    return lin


def _flop_macs(layer: nn.Module, x: torch.Tensor) -> int:
    """Matmul MACs of one forward, counted by PyTorch (FLOPs / 2 / batch)."""
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        layer(x)
    return fc.get_total_flops() // 2 // x.shape[0]


def test_registered():
    assert FORMATS["tt"] is TTLinear


def test_balanced_modes_by_hand():
    assert balanced_modes(512) == (8, 8, 8)
    assert balanced_modes(784) == (7, 8, 14)
    assert balanced_modes(10) == (1, 2, 5)
    assert balanced_modes(7) == (1, 1, 7)
    assert balanced_modes(1) == (1, 1, 1)
    assert balanced_modes(36, 2) == (6, 6)
    assert balanced_modes(64, 4) == (2, 2, 4, 4)


@settings(max_examples=25, deadline=None)
@given(size=st.integers(1, 5000), d=st.integers(2, 4))
def test_balanced_modes_multiply_back(size, d):
    modes = balanced_modes(size, d)
    assert len(modes) == d and math.prod(modes) == size and list(modes) == sorted(modes)


@pytest.mark.parametrize(
    ("i", "o", "modes"),
    [(24, 30, {}), (64, 10, {}), (12, 12, {"d": 2}), (16, 16, {"in_modes": [2, 2, 2, 2],
                                                               "out_modes": [1, 4, 2, 2]})],
)
def test_full_rank_is_exact(i, o, modes):
    lin = _linear(i, o)
    spec = LinearSpec.from_linear(lin)
    layer = TTLinear.from_dense(lin, TTLinear.max_rank(spec, **modes), name="fc", **modes)
    x = torch.randn(3, 2, i, dtype=torch.float64)
    assert layer(x).shape == (3, 2, o)
    assert rel_err(layer(x), lin(x)) < 1e-10
    assert rel_err(layer.dense_weight(), lin.weight) < 1e-10


def test_truncated_error_bound():
    lin = _linear(48, 36)
    spec = LinearSpec.from_linear(lin)
    spectra = TTLinear.spectra(lin.weight, spec)
    assert [s.numel() for s in spectra] == list(TTLinear.max_rank(spec))
    for rank in [(1, 1), (2, 5), (3, 9), (4, 2)]:
        layer = TTLinear.from_dense(lin, rank)
        err = float((layer.dense_weight() - lin.weight).norm())
        bound = math.sqrt(sum(float(s[r:].pow(2).sum()) for s, r in zip(spectra, rank,
                                                                          strict=True)))
        assert err <= bound + 1e-10


def test_counts_by_hand():
    spec = LinearSpec(24, 30)
    layer = TTLinear.from_spec(spec, (3, 5))
    assert layer.in_modes == (4, 3, 2) and layer.out_modes == (2, 3, 5)
    params = 1 * 2 * 4 * 3 + 3 * 3 * 3 * 5 + 5 * 5 * 2 * 1 + 30
    # core k: (m_1..m_k)·(n_k..n_d)·r_{k-1}·r_k
    macs = 2 * 24 * 1 * 3 + 6 * 6 * 3 * 5 + 30 * 2 * 5 * 1
    assert TTLinear.cost(spec, (3, 5)) == (params, macs)
    assert layer.params() == numel(layer) == params
    assert layer.macs() == _flop_macs(layer, torch.randn(2, 24)) == macs


@settings(max_examples=25, deadline=None)
@given(i=st.integers(1, 40), o=st.integers(1, 40), d=st.integers(2, 3), bias=st.booleans(),
       data=st.data())
def test_properties(i, o, d, bias, data):
    lin = _linear(i, o, bias)
    spec = LinearSpec.from_linear(lin)
    limit = TTLinear.max_rank(spec, d=d)
    assert len(limit) == d - 1
    rank = tuple(data.draw(st.integers(1, m)) for m in limit)
    layer = TTLinear.from_dense(lin, rank, d=d)
    x = torch.randn(3, i, dtype=torch.float64)
    y = layer(x)
    assert y.shape == lin(x).shape
    assert rel_err(layer.to_dense()(x), y) < 1e-10
    params, macs = TTLinear.cost(spec, rank, in_modes=layer.in_modes, out_modes=layer.out_modes)
    assert layer.params() == numel(layer) == params
    assert layer.macs() == macs
    full = (1, *rank)
    if all(full[k] * n > 1 for k, n in enumerate(layer.in_modes)):
        # (a core with nothing to contract runs as a broadcast multiply, not a matmul, and is
        # invisible to the FLOP counter)
        assert _flop_macs(layer, x) == macs
    d_spec = json_round_trip(layer.spec())
    assert d_spec["options"] == {"in_modes": list(layer.in_modes),
                                 "out_modes": list(layer.out_modes)}
    fresh = layer_from_spec(d_spec)
    assert type(fresh) is TTLinear and fresh.rank == rank and fresh.dense_spec == spec
    assert (fresh.in_modes, fresh.out_modes) == (layer.in_modes, layer.out_modes)
    assert numel(fresh) == params
    assert fresh(x.float()).shape == y.shape


def test_fresh_init_matches_linear_scale():
    torch.manual_seed(0)
    layer = TTLinear.from_spec(LinearSpec(64, 64), (4, 4))
    std = float(layer.dense_weight().std())
    target = 1 / math.sqrt(3 * 64)  # nn.Linear default: U(-1/√in, 1/√in)
    assert target / 2 < std < target * 2


def test_backward_and_bias():
    lin = nn.Linear(12, 8)
    layer = TTLinear.from_dense(lin, (2, 2))
    assert torch.equal(layer.bias, lin.bias)
    layer(torch.randn(4, 12)).square().sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
    assert "in_modes=(3, 2, 2)" in repr(layer)


@pytest.mark.parametrize("rank", [3, (3,), (2, 2, 2), (0, 2), (2, 0), (9, 2), (2, 11), (1.5, 2)])
def test_rank_errors_name_the_layer_and_limit(rank):
    lin = nn.Linear(24, 30)  # in (4,3,2), out (2,3,5): tensor (8, 9, 10), limit (8, 10)
    with pytest.raises(RankError) as e:
        TTLinear.from_dense(lin, rank, name="classifier")
    assert "classifier" in str(e.value) and "(8, 10)" in str(e.value)


def test_mode_errors_and_unsupported_layers():
    with pytest.raises(ConfigError, match="fc"):
        TTLinear.from_dense(nn.Linear(12, 8), (1,), name="fc", in_modes=[3, 5], out_modes=[2, 4])
    with pytest.raises(ConfigError):
        TTLinear.from_spec(LinearSpec(12, 8), (1,), in_modes=[3, 4], out_modes=[2, 2, 2])
    with pytest.raises(ConfigError):
        TTLinear.from_spec(LinearSpec(12, 8), (), in_modes=[12], out_modes=[8])
    with pytest.raises(UnsupportedLayerError, match="conv1"):
        TTLinear.from_dense(nn.Conv2d(3, 3, 1), (1, 1), name="conv1")
    with pytest.raises(UnsupportedLayerError):
        TTLinear.from_spec(ConvSpec.from_conv(nn.Conv2d(3, 3, 1)), (1, 1))


def test_any_leading_dims_and_non_contiguous_input():
    layer = TTLinear.from_dense(_linear(12, 8), (2, 2))
    dense = layer.to_dense()
    x1 = torch.randn(12, dtype=torch.float64)
    assert layer(x1).shape == (8,)
    assert rel_err(layer(x1), dense(x1)) < 1e-12
    x3 = torch.randn(5, 3, 12, dtype=torch.float64).transpose(0, 1)
    assert rel_err(layer(x3), dense(x3)) < 1e-12
