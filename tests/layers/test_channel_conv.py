import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rankwise.errors import RankError, UnsupportedLayerError
from rankwise.layers import FORMATS, ConvSpec, LinearSpec, layer_from_spec
from rankwise.layers.channel_conv import ChannelLowRankConv2d
from rankwise.linalg.grouped import channel_matricize_groups, channel_unmatricize_groups
from rankwise.linalg.matricize import channel_matricize
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

Cls = ChannelLowRankConv2d
pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")


def _group_svdvals(w: torch.Tensor, groups: int) -> list[torch.Tensor]:
    """Singular values of each group's channel matricization, computed block by block."""
    n = w.shape[0] // groups
    return [torch.linalg.svdvals(channel_matricize(w[j * n:(j + 1) * n])) for j in range(groups)]


def test_registered():
    assert FORMATS["channel"] is Cls and Cls.dense_type is nn.Conv2d


def test_max_rank_by_hand():
    assert Cls.max_rank(ConvSpec(16, 32, (3, 3))) == (32,)  # min(32, 144)
    assert Cls.max_rank(ConvSpec(4, 64, (3, 3))) == (36,)  # min(64, 36)
    assert Cls.max_rank(ConvSpec(8, 12, (3, 5), groups=4)) == (3,)  # min(3, 2·15)
    assert Cls.max_rank(ConvSpec(8, 8, (3, 3), groups=8)) == (1,)  # depthwise
    assert Cls.max_rank(ConvSpec(5, 7, (1, 1))) == (5,)


def test_counts_by_hand():
    # 3x3 conv 16->32, pad 1, 32x32, rank 4: params r·c·kh·kw + n·r + n, MACs H·W·(r·c·9 + n·r)
    spec = ConvSpec(16, 32, (3, 3), padding=(1, 1))
    per_pixel = 4 * 16 * 9 + 32 * 4
    assert Cls.cost(spec, 4, (32, 32)) == (per_pixel + 32, 32 * 32 * per_pixel)
    assert Cls.cost(spec, 4) == (736, 704)  # input_hw=None: MACs per output pixel
    # stride 2 halves the output map for both sub-convs: 16x16
    spec2 = ConvSpec(16, 32, (3, 3), stride=(2, 2), padding=(1, 1), bias=False)
    assert Cls.cost(spec2, 4, (32, 32)) == (704, 16 * 16 * 704)
    # grouped 8->12, (3,5), g=4, rank 2 per group, no padding on 10x9 -> out 8x5
    spec3 = ConvSpec(8, 12, (3, 5), groups=4)
    params = 4 * 2 * (8 // 4) * 15 + 12 * 2 + 12  # g·r·(c/g)·kh·kw + n·r + n
    assert Cls.cost(spec3, 2, (10, 9)) == (params, 8 * 5 * (240 + 24))
    for s, r, hw in ((spec, 4, (32, 32)), (spec2, 4, (32, 32)), (spec3, 2, (10, 9))):
        layer = Cls.from_spec(s, r)
        x = torch.randn(1, s.in_channels, *hw)
        assert layer.params() == numel(layer)
        assert layer.macs(hw) == hook_macs(layer, x)


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
    for r in {1, max(1, m // 2), m}:
        layer = Cls.from_dense(dense, r)
        # error measured in the layer's matricization, block by block
        n = spec.out_channels // spec.groups
        diff = w - layer.dense_weight().detach()
        err2 = sum(channel_matricize(diff[j * n:(j + 1) * n]).square().sum()
                   for j in range(spec.groups))
        expected2 = sum(s[r:].square().sum() for s in sig)
        assert torch.allclose(torch.as_tensor(err2), torch.as_tensor(expected2),
                              rtol=1e-8, atol=1e-20)
        (s,) = Cls.spectra(w, spec)
        assert torch.allclose(s[r:].square().sum(), torch.as_tensor(expected2), atol=1e-12)


def test_spectra_shape_and_values():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, (2, 3)).double()
    spec = ConvSpec.from_conv(conv)
    (s,) = Cls.spectra(conv.weight, spec)
    assert torch.allclose(s, torch.linalg.svdvals(conv.weight.detach().reshape(6, 24)))
    grouped = nn.Conv2d(6, 9, 3, groups=3).double()
    gspec = ConvSpec.from_conv(grouped)
    (gs,) = Cls.spectra(grouped.weight, gspec)
    assert gs.shape == Cls.max_rank(gspec)
    assert torch.all(gs[:-1] >= gs[1:])
    sig = _group_svdvals(grouped.weight.detach(), 3)
    assert torch.allclose(gs, torch.stack(sig).square().sum(0).sqrt())
    with pytest.raises(UnsupportedLayerError):
        Cls.spectra(torch.randn(6, 4, 3, 3), spec)


def test_grouped_matricize_matches_blockwise():
    w = torch.randn(6, 2, 3, 4)
    m = channel_matricize_groups(w, 3)
    assert m.shape == (3, 2, 24)
    for j in range(3):
        assert torch.equal(m[j], channel_matricize(w[2 * j:2 * j + 2]))
    assert torch.equal(channel_unmatricize_groups(m, w.shape), w)


def test_grouped_factors_layout():
    # each group's 1x1 block only mixes its own r intermediate channels: the layer is block diagonal
    torch.manual_seed(0)
    dense = nn.Conv2d(4, 6, 3, groups=2, padding=1).double()
    layer = Cls.from_dense(dense, 2)
    assert layer.first.groups == layer.second.groups == 2
    assert layer.first.out_channels == 4 and layer.second.in_channels == 4
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 2:] += 1.0  # change only group 1's inputs
    dy = layer(x2) - layer(x)
    assert dy[:, :3].abs().max() == 0  # group 0's outputs unchanged


def test_depthwise_builds_and_is_exact():
    torch.manual_seed(0)
    dense = nn.Conv2d(5, 5, 3, padding=1, groups=5).double()
    layer = Cls.from_dense(dense, 1, name="dw")
    x = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    assert rel_err(layer(x), dense(x)) <= 1e-10
    dense_params = sum(p.numel() for p in dense.parameters())
    assert layer.params() > dense_params  # nothing saved; surgery decides
    with pytest.raises(RankError, match="dw"):
        Cls.from_dense(dense, 2, name="dw")


def test_dtype_device_and_to_dense():
    for dtype in (torch.float64, torch.float32):
        dense = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect").to(dtype)
        layer = Cls.from_dense(dense, 2)
        assert all(p.dtype == dtype and p.device.type == "cpu" for p in layer.parameters())
        back = layer.to_dense()
        assert isinstance(back, nn.Conv2d) and back.weight.dtype == dtype
        assert ConvSpec.from_conv(back) == ConvSpec.from_conv(dense)
        x = torch.randn(2, 3, 6, 6, dtype=dtype)
        assert rel_err(back(x), layer(x)) <= (1e-10 if dtype == torch.float64 else 1e-5)
        assert torch.equal(layer.bias, dense.bias.detach())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_factors_follow_cuda_weight():
    dense = nn.Conv2d(4, 6, 3, padding=1, groups=2).cuda()
    layer = Cls.from_dense(dense, 2)
    assert all(p.is_cuda and p.dtype == torch.float32 for p in layer.parameters())
    x = torch.randn(2, 4, 5, 5, device="cuda")
    assert layer(x).shape == dense(x).shape


def test_rank_errors_name_layer_max_and_fix():
    dense = nn.Conv2d(8, 12, 3, groups=4)
    for bad in (0, 4, 100):
        with pytest.raises(RankError) as e:
            Cls.from_dense(dense, bad, name="layer1.0.conv2")
        msg = str(e.value)
        assert "layer1.0.conv2" in msg and "3 per group" in msg and "between 1 and 3" in msg
    for bad in (1.5, "2", False, [1, 2]):
        with pytest.raises(RankError, match="layer1.0.conv2"):
            Cls.from_dense(dense, bad, name="layer1.0.conv2")
    with pytest.raises(RankError, match=r"Conv2d\(8, 12, kernel_size=\(3, 3\), groups=4\)"):
        Cls.from_dense(dense, 9)
    with pytest.raises(RankError):
        Cls.from_spec(ConvSpec(8, 12, (3, 3)), 13)
    with pytest.raises(RankError):
        Cls.cost(ConvSpec(8, 12, (3, 3)), 0, (8, 8))


def test_unsupported_layers():
    with pytest.raises(UnsupportedLayerError, match="fc"):
        Cls.from_dense(nn.Linear(4, 3), 1, name="fc")
    with pytest.raises(UnsupportedLayerError):
        Cls.from_dense(nn.ConvTranspose2d(3, 4, 3), 1)
    with pytest.raises(UnsupportedLayerError):
        Cls.from_dense(nn.LazyConv2d(4, 3), 1)
    with pytest.raises(UnsupportedLayerError):
        Cls.from_spec(LinearSpec(4, 3), 1)


def test_repr_is_readable():
    text = repr(Cls.from_spec(ConvSpec(8, 12, (3, 3), padding="same", groups=4), 2))
    assert "8 -> 12" in text and "rank=2" in text and "max 3 per group" in text
    assert "'same'" in text and "(first)" in text and "(second)" in text


@settings(max_examples=25, deadline=None)
@given(case=conv_cases(), data=st.data())
def test_properties(case: ConvCase, data):
    dense = case.make()
    spec = ConvSpec.from_conv(dense)
    (m,) = Cls.max_rank(spec)
    g = spec.groups
    kh, kw = spec.kernel_size
    assert m == min(spec.out_channels // g, spec.in_channels // g * kh * kw)
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
    assert d["format"] == "channel" and d["rank"] == r
    fresh = layer_from_spec(d)
    assert type(fresh) is Cls and fresh.rank == r and fresh.dense_spec == spec
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in layer.state_dict().items()
    }
    assert fresh.params() == layer.params() == numel(fresh)
    assert fresh(x.float()).shape == y.shape
