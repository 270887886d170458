import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rankwise.errors import RankError, UnsupportedLayerError
from rankwise.layers import FORMATS, ConvSpec, LinearSpec, layer_from_spec
from rankwise.layers.spatial_conv import SpatialLowRankConv2d
from rankwise.linalg.grouped import spatial_matricize_groups, spatial_unmatricize_groups
from rankwise.linalg.matricize import spatial_matricize, spatial_unmatricize
from rankwise.linalg.svd import low_rank_approx
from tests.layers.cases import (
    EXPLICIT_CASES,
    PADDING_MODES,
    ConvCase,
    case_id,
    conv_cases,
    hook_macs,
    json_round_trip,
    numel,
    rel_err,
)

Cls = SpatialLowRankConv2d
pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")


def _group_svdvals(w: torch.Tensor, groups: int) -> list[torch.Tensor]:
    """Singular values of each group's spatial matricization, computed block by block."""
    n = w.shape[0] // groups
    return [torch.linalg.svdvals(spatial_matricize(w[j * n:(j + 1) * n])) for j in range(groups)]


def test_registered():
    assert FORMATS["spatial"] is Cls and Cls.dense_type is nn.Conv2d


def test_max_rank_by_hand():
    assert Cls.max_rank(ConvSpec(16, 32, (3, 3))) == (48,)  # min(32·3, 16·3)
    assert Cls.max_rank(ConvSpec(64, 4, (3, 5))) == (20,)  # min(4·5, 64·3)
    assert Cls.max_rank(ConvSpec(6, 9, (3, 4), groups=3)) == (6,)  # min(3·4, 2·3)
    assert Cls.max_rank(ConvSpec(8, 8, (3, 3), groups=8)) == (3,)  # depthwise: min(3, 3)
    assert Cls.max_rank(ConvSpec(5, 7, (1, 1))) == (5,)


def test_counts_by_hand():
    # stride 1, pad 1 ("same" size), 32x32, rank 4: params r·c·kh + n·r·kw + n,
    # MACs H·W·(r·c·kh + n·r·kw)
    spec = ConvSpec(16, 32, (3, 3), padding=(1, 1))
    per_pixel = 4 * 16 * 3 + 32 * 4 * 3
    assert Cls.cost(spec, 4, (32, 32)) == (per_pixel + 32, 32 * 32 * per_pixel)
    assert Cls.cost(ConvSpec(16, 32, (3, 3), padding="same"), 4, (32, 32))[1] == 32 * 32 * 576
    assert Cls.cost(spec, 4) == (608, 576)  # input_hw=None: MACs per output pixel
    # stride 2: the kh×1 conv strides H only -> 16x32 map; the 1×kw conv then strides W -> 16x16
    spec2 = ConvSpec(16, 32, (3, 3), stride=(2, 2), padding=(1, 1), bias=False)
    assert Cls.cost(spec2, 4, (32, 32)) == (576, 16 * 32 * 4 * 16 * 3 + 16 * 16 * 32 * 4 * 3)
    # grouped 6->9, (3,4), g=3, rank 2 per group, no padding, 8x7: mid 6x7, out 6x4
    spec3 = ConvSpec(6, 9, (3, 4), groups=3)
    params = 2 * 6 * 3 + 9 * 2 * 4 + 9  # r·c·kh + n·r·kw + n
    macs = 6 * 7 * (3 * 2) * 2 * 3 + 6 * 4 * 9 * 2 * 4
    assert Cls.cost(spec3, 2, (8, 7)) == (params, macs)
    for s, r, hw in ((spec, 4, (32, 32)), (spec2, 4, (32, 32)), (spec3, 2, (8, 7))):
        layer = Cls.from_spec(s, r)
        x = torch.randn(1, s.in_channels, *hw)
        assert layer.params() == numel(layer)
        assert layer.macs(hw) == hook_macs(layer, x)


def test_sub_conv_arguments():
    spec = ConvSpec(4, 6, (3, 5), stride=(2, 3), padding=(1, 2), dilation=(2, 1),
                    padding_mode="reflect")
    layer = Cls.from_spec(spec, 3)
    f, s = layer.first, layer.second
    assert (f.kernel_size, f.stride, f.padding, f.dilation) == ((3, 1), (2, 1), (1, 0), (2, 1))
    assert (s.kernel_size, s.stride, s.padding, s.dilation) == ((1, 5), (1, 3), (0, 2), (1, 1))
    assert f.padding_mode == s.padding_mode == "reflect"
    assert f.bias is None and s.bias is not None


@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("padding", [(2, 1), (0, 2), "same"])
def test_padding_split_is_exact(mode, padding):
    # padding is separable per axis, so (ph, 0) + (0, pw) reproduces the dense 2-D padding
    torch.manual_seed(0)
    dense = nn.Conv2d(3, 4, (3, 4), padding=padding, padding_mode=mode).double()
    (m,) = Cls.max_rank(ConvSpec.from_conv(dense))
    layer = Cls.from_dense(dense, m)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    assert rel_err(layer(x), dense(x)) <= 1e-10


@pytest.mark.parametrize("case", EXPLICIT_CASES, ids=case_id)
def test_full_rank_is_exact(case: ConvCase):
    dense = case.make()
    (m,) = Cls.max_rank(ConvSpec.from_conv(dense))
    layer = Cls.from_dense(dense, m)
    x = case.input()
    assert rel_err(layer(x), dense(x)) <= 1e-10
    dense32 = case.make(torch.float32)
    layer32 = Cls.from_dense(dense32, m)
    assert rel_err(layer32(x.float()), dense32(x.float())) <= 1e-5
    assert layer.macs(case.input_hw) == hook_macs(layer, x)
    assert layer.params() == numel(layer)


@pytest.mark.parametrize("case", EXPLICIT_CASES, ids=case_id)
def test_eckart_young_per_group(case: ConvCase):
    dense = case.make()
    spec = ConvSpec.from_conv(dense)
    (m,) = Cls.max_rank(spec)
    w = dense.weight.detach()
    sig = _group_svdvals(w, spec.groups)
    n = spec.out_channels // spec.groups
    for r in {1, max(1, m // 2), m}:
        layer = Cls.from_dense(dense, r)
        diff = w - layer.dense_weight().detach()
        err2 = sum(spatial_matricize(diff[j * n:(j + 1) * n]).square().sum()
                   for j in range(spec.groups))
        expected2 = sum(s[r:].square().sum() for s in sig)
        assert torch.allclose(torch.as_tensor(err2), torch.as_tensor(expected2),
                              rtol=1e-8, atol=1e-20)
        (s,) = Cls.spectra(w, spec)
        assert torch.allclose(s[r:].square().sum(), torch.as_tensor(expected2), atol=1e-12)


def test_dense_weight_is_the_truncated_spatial_matricization():
    torch.manual_seed(0)
    dense = nn.Conv2d(3, 5, (2, 3)).double()
    w = dense.weight.detach()
    layer = Cls.from_dense(dense, 2)
    expected = spatial_unmatricize(low_rank_approx(spatial_matricize(w), 2), w.shape)
    assert torch.allclose(layer.dense_weight(), expected, atol=1e-12)


def test_spectra_shape_and_values():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, (2, 3)).double()
    spec = ConvSpec.from_conv(conv)
    (s,) = Cls.spectra(conv.weight, spec)
    assert torch.allclose(s, torch.linalg.svdvals(spatial_matricize(conv.weight.detach())))
    grouped = nn.Conv2d(6, 9, (3, 2), groups=3).double()
    gspec = ConvSpec.from_conv(grouped)
    (gs,) = Cls.spectra(grouped.weight, gspec)
    assert gs.shape == Cls.max_rank(gspec)
    assert torch.all(gs[:-1] >= gs[1:])
    sig = _group_svdvals(grouped.weight.detach(), 3)
    assert torch.allclose(gs, torch.stack(sig).square().sum(0).sqrt())


def test_grouped_matricize_matches_blockwise():
    w = torch.randn(6, 2, 3, 4)
    m = spatial_matricize_groups(w, 3)
    assert m.shape == (3, 2 * 4, 2 * 3)
    for j in range(3):
        assert torch.equal(m[j], spatial_matricize(w[2 * j:2 * j + 2]))
    assert torch.equal(spatial_unmatricize_groups(m, w.shape), w)


def test_depthwise_builds_and_is_exact():
    torch.manual_seed(0)
    dense = nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="replicate").double()
    layer = Cls.from_dense(dense, 3)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    assert rel_err(layer(x), dense(x)) <= 1e-10
    assert rel_err(Cls.from_dense(dense, 1)(x), dense(x)) > 1e-6  # rank 1 is an approximation


def test_dtype_device_and_to_dense():
    for dtype in (torch.float64, torch.float32):
        dense = nn.Conv2d(3, 4, (3, 2), padding="same", padding_mode="circular").to(dtype)
        layer = Cls.from_dense(dense, 2)
        assert all(p.dtype == dtype and p.device.type == "cpu" for p in layer.parameters())
        back = layer.to_dense()
        assert ConvSpec.from_conv(back) == ConvSpec.from_conv(dense)
        x = torch.randn(2, 3, 6, 7, dtype=dtype)
        assert rel_err(back(x), layer(x)) <= (1e-10 if dtype == torch.float64 else 1e-5)


def test_rank_errors_name_layer_max_and_fix():
    dense = nn.Conv2d(6, 9, (3, 4), groups=3)
    for bad in (0, 7):
        with pytest.raises(RankError) as e:
            Cls.from_dense(dense, bad, name="features.3")
        msg = str(e.value)
        assert "features.3" in msg and "6 per group" in msg and "between 1 and 6" in msg
    for bad in (2.5, "1", True):
        with pytest.raises(RankError, match="features.3"):
            Cls.from_dense(dense, bad, name="features.3")
    with pytest.raises(RankError, match=r"Conv2d\(6, 9"):
        Cls.from_dense(dense, 100)
    with pytest.raises(RankError):
        Cls.cost(ConvSpec(3, 4, (3, 3)), 10)


def test_unsupported_layers():
    with pytest.raises(UnsupportedLayerError, match="classifier"):
        Cls.from_dense(nn.Linear(4, 3), 1, name="classifier")
    with pytest.raises(UnsupportedLayerError):
        Cls.from_dense(nn.Conv1d(3, 4, 3), 1)
    with pytest.raises(UnsupportedLayerError):
        Cls.max_rank(LinearSpec(4, 3))


def test_repr_is_readable():
    text = repr(Cls.from_spec(ConvSpec(4, 6, (3, 5), padding=(1, 2)), 2))
    assert "4 -> 6" in text and "kernel_size=(3, 5)" in text and "rank=2 (max 12)" in text


@settings(max_examples=25, deadline=None)
@given(case=conv_cases(), data=st.data())
def test_properties(case: ConvCase, data):
    dense = case.make()
    spec = ConvSpec.from_conv(dense)
    (m,) = Cls.max_rank(spec)
    g = spec.groups
    kh, kw = spec.kernel_size
    assert m == min(spec.out_channels // g * kw, spec.in_channels // g * kh)
    r = data.draw(st.integers(1, m), label="rank")
    x = case.input()
    y_dense = dense(x)
    full = Cls.from_dense(dense, m, name="conv")
    assert rel_err(full(x), y_dense) <= 1e-10
    layer = Cls.from_dense(dense, r, name="conv")
    y = layer(x)
    assert y.shape == y_dense.shape
    assert rel_err(layer.to_dense()(x), y) <= 1e-10
    assert Cls.cost(spec, r, case.input_hw) == (numel(layer), hook_macs(layer, x))
    d = json_round_trip(layer.spec())
    assert d["format"] == "spatial" and d["rank"] == r
    fresh = layer_from_spec(d)
    assert type(fresh) is Cls and fresh.rank == r and fresh.dense_spec == spec
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in layer.state_dict().items()
    }
    assert fresh.params() == layer.params() == numel(fresh)
    assert fresh(x.float()).shape == y.shape
