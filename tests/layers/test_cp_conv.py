"""CPConv2d: exact-rank recovery, separable padding, counting, specs, errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rankwise.errors import RankError, UnsupportedLayerError
from rankwise.layers import FORMATS, layer_from_spec
from rankwise.layers.cp_conv import CPConv2d
from rankwise.layers.shapes import ConvSpec, LinearSpec
from rankwise.linalg.cp import cp_reconstruct
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


def _set_exact_cp_weight(conv: nn.Conv2d, rank: int, seed: int = 0) -> None:
    """Overwrite `conv.weight` with a weight of exact CP rank `rank` in every group."""
    g = torch.Generator().manual_seed(seed)
    n, c_g, kh, kw = conv.weight.shape
    n_g = n // conv.groups
    blocks = [cp_reconstruct([torch.randn(s, rank, generator=g, dtype=torch.float64)
                              for s in (n_g, c_g, kh, kw)]) for _ in range(conv.groups)]
    with torch.no_grad():
        conv.weight.copy_(torch.cat(blocks, 0))


def test_registered():
    assert FORMATS["cp"] is CPConv2d


@pytest.mark.parametrize("case", EXPLICIT_CASES, ids=case_id)
def test_exact_cp_rank_weight_is_recovered(case: ConvCase):
    conv = case.make(torch.float64)
    rank = min(2, CPConv2d.max_rank(ConvSpec.from_conv(conv))[0])
    _set_exact_cp_weight(conv, rank)
    layer = CPConv2d.from_dense(conv, rank, name="features.0", n_iter_max=1000, tol=1e-8)
    x = case.input(dtype=torch.float64)
    assert rel_err(layer(x), conv(x)) < 1e-6
    assert rel_err(layer.dense_weight(), conv.weight) < 1e-6


@pytest.mark.parametrize("case", EXPLICIT_CASES, ids=case_id)
def test_forward_equals_to_dense_for_random_factors(case: ConvCase):
    """Stride/padding/dilation/padding_mode split exactly across the kh×1 and 1×kw convs."""
    torch.manual_seed(0)
    spec = ConvSpec.from_conv(case.make())
    layer = CPConv2d.from_spec(spec, 3, dtype=torch.float64)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    x = case.input(dtype=torch.float64)
    assert rel_err(layer(x), layer.to_dense()(x)) < 1e-12


def test_max_rank_by_hand():
    # min(c·kh·kw, n·kh·kw, n·c·kw, n·c·kh) = min(144, 288, 1536, 1536)
    assert CPConv2d.max_rank(ConvSpec.from_conv(nn.Conv2d(16, 32, 3))) == (144,)
    assert CPConv2d.max_rank(ConvSpec.from_conv(nn.Conv2d(5, 7, 1))) == (5,)
    # per group (n_g, c_g) = (3, 2), kernel 1×4: min(8, 12, 24, 6)
    assert CPConv2d.max_rank(ConvSpec.from_conv(nn.Conv2d(4, 6, (1, 4), groups=2))) == (6,)


def test_counts_by_hand():
    spec = ConvSpec.from_conv(nn.Conv2d(16, 32, 3, stride=2, padding=1))
    r = 10
    params, macs = CPConv2d.cost(spec, r, (32, 32))
    assert params == 16 * r + r * 3 + r * 3 + r * 32 + 32
    # first at 32×32; kh×1 (stride 2 along H) → 16×32; 1×kw (stride 2 along W) → 16×16; last 16×16
    assert macs == 32 * 32 * r * 16 + 16 * 32 * r * 3 + 16 * 16 * r * 3 + 16 * 16 * 32 * r
    assert CPConv2d.cost(spec, r)[1] == 16 * r + 3 * r + 3 * r + 32 * r
    layer = CPConv2d.from_spec(spec, r)
    assert layer.params() == numel(layer) == params
    assert layer.macs((32, 32)) == hook_macs(layer, torch.randn(1, 16, 32, 32)) == macs


def test_grouped_counts_by_hand():
    spec = ConvSpec.from_conv(nn.Conv2d(6, 9, (3, 4), padding=(2, 1), groups=3, bias=False))
    r = 2  # per group
    params, macs = CPConv2d.cost(spec, r, (8, 7))  # output (10, 6)
    assert params == 6 * r + 3 * r * 3 + 3 * r * 4 + 9 * r
    assert macs == (8 * 7 * 3 * r * 2 + 10 * 7 * 3 * r * 3 + 10 * 6 * 3 * r * 4
                    + 10 * 6 * 9 * r)
    layer = CPConv2d.from_spec(spec, r)
    assert numel(layer) == params
    assert hook_macs(layer, torch.randn(1, 6, 8, 7)) == macs


@settings(max_examples=25, deadline=None)
@given(case=conv_cases(), f=st.floats(0.0, 1.0))
def test_properties(case: ConvCase, f: float):
    conv = case.make(torch.float64)
    spec = ConvSpec.from_conv(conv)
    rank = 1 + round(f * (min(6, CPConv2d.max_rank(spec)[0]) - 1))
    layer = CPConv2d.from_dense(conv, rank, name="block.conv", n_iter_max=50)
    x = case.input(dtype=torch.float64)
    y = layer(x)
    assert y.shape == conv(x).shape
    assert rel_err(layer.to_dense()(x), y) < 1e-10
    params, macs = CPConv2d.cost(spec, rank, case.input_hw)
    assert layer.params() == numel(layer) == params
    assert layer.macs(case.input_hw) == hook_macs(layer, x) == macs
    (s,) = CPConv2d.spectra(conv.weight, spec)
    n_g, c_g = spec.out_channels // spec.groups, spec.in_channels // spec.groups
    assert s.numel() == min(n_g, c_g * spec.kernel_size[0] * spec.kernel_size[1])
    assert torch.allclose(s.pow(2).sum(), conv.weight.pow(2).sum())
    fresh = layer_from_spec(json_round_trip(layer.spec()))
    assert type(fresh) is CPConv2d and fresh.rank == rank and fresh.dense_spec == spec
    assert numel(fresh) == params
    assert fresh(x.float()).shape == y.shape


def test_deterministic_backward_and_bias():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    a, b = CPConv2d.from_dense(conv, 5), CPConv2d.from_dense(conv, 5)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert all(p.dtype == torch.float32 for p in a.parameters())
    assert torch.equal(a.bias, conv.bias)
    a(torch.randn(2, 4, 5, 5)).square().sum().backward()
    assert all(p.grad is not None for p in a.parameters())
    assert "rank=5" in repr(a)


def test_tuple_rank_of_one_is_accepted():
    layer = CPConv2d.from_spec(ConvSpec.from_conv(nn.Conv2d(4, 6, 3)), (4,))
    assert layer.rank == 4 and layer.spec()["rank"] == 4


@pytest.mark.parametrize("rank", [0, -1, 37, (2, 2), 2.5, True])
def test_rank_errors_name_the_layer_and_limit(rank):
    conv = nn.Conv2d(4, 6, 3)  # limit min(36, 54, 72, 72) = 36
    with pytest.raises(RankError) as e:
        CPConv2d.from_dense(conv, rank, name="layer2.1.conv1")
    assert "layer2.1.conv1" in str(e.value) and "36" in str(e.value)


def test_unsupported_layers():
    with pytest.raises(UnsupportedLayerError, match="head"):
        CPConv2d.from_dense(nn.Linear(4, 4), 1, name="head")
    with pytest.raises(UnsupportedLayerError):
        CPConv2d.from_spec(LinearSpec(4, 4), 1)
    with pytest.raises(TypeError):
        CPConv2d.from_dense(nn.Conv2d(2, 2, 1), 1, bogus=1)


def test_exact_method_is_exact_where_als_at_that_rank_is_not_guaranteed():
    torch.manual_seed(3)
    for conv in (nn.Conv2d(6, 6, 3, groups=6).double(), nn.Conv2d(4, 6, (3, 1)).double()):
        spec = ConvSpec.from_conv(conv)
        r = CPConv2d.exact_rank(conv.weight, spec)
        assert r <= CPConv2d.max_rank(spec)[0]
        layer = CPConv2d.from_dense(conv, r, method="exact")
        assert torch.allclose(layer.dense_weight(), conv.weight, atol=1e-10)
        if r < CPConv2d.max_rank(spec)[0]:
            padded = CPConv2d.from_dense(conv, r + 1, method="exact")  # zero extra components
            assert torch.allclose(padded.dense_weight(), conv.weight, atol=1e-10)
    with pytest.raises(RankError, match="exact rank"):
        CPConv2d.from_dense(nn.Conv2d(4, 4, 3), 1, method="exact")


def test_n_iter_max_caps_sweeps_and_callback_reports_them():
    torch.manual_seed(4)
    conv = nn.Conv2d(8, 8, 3, groups=2)
    seen: list[tuple[int, float]] = []
    CPConv2d.from_dense(conv, 3, n_iter_max=4, tol=0.0, callback=lambda i, e: seen.append((i, e)))
    assert [i for i, _ in seen] == [1, 2, 3, 4]  # groups are fitted together, one run
    assert all(0.0 <= e <= 1.0 for _, e in seen)
    with pytest.raises(TypeError, match="unknown option"):
        CPConv2d.from_dense(conv, 3, iterations=4)


def test_grouped_fit_matches_per_group_fit():
    torch.manual_seed(5)
    conv = nn.Conv2d(6, 4, 3, groups=2).double()
    both = CPConv2d.from_dense(conv, 2, n_iter_max=30)
    for k in range(2):
        sub = nn.Conv2d(3, 2, 3).double()
        with torch.no_grad():
            sub.weight.copy_(conv.weight[2 * k:2 * k + 2])
        one = CPConv2d.from_dense(sub, 2, n_iter_max=30)
        assert torch.allclose(both.dense_weight()[2 * k:2 * k + 2], one.dense_weight(),
                              atol=1e-8)
