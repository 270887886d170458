"""ProjectedMultiheadAttention computes exactly what nn.MultiheadAttention computes."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from rankwise.errors import UnsupportedLayerError
from rankwise.layers.mha import ProjectedMultiheadAttention


def _mask_cases(n: int, h: int, tgt: int, src: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    kpm = torch.rand(n, src, generator=g) > 0.7
    kpm[:, 0] = False
    am = torch.randn(tgt, src, generator=g, dtype=torch.float64)
    return [{}, {"key_padding_mask": kpm}, {"attn_mask": am},
            {"attn_mask": am, "key_padding_mask": kpm.double() * -1e9},
            {"attn_mask": torch.rand(n * h, tgt, src, generator=g) > 0.8}]


@pytest.mark.parametrize("batch_first,kdim,need_weights,average",
                         list(itertools.product([False, True], [None, 6], [True, False],
                                                [True, False])))
def test_matches_multihead_attention(batch_first, kdim, need_weights, average):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim).double()
    mha.eval()
    proj = ProjectedMultiheadAttention.from_mha(mha)
    n, tgt, src = 3, 5, 7
    q = torch.randn((n, tgt, 8) if batch_first else (tgt, n, 8), dtype=torch.float64)
    k = torch.randn((n, src, kdim or 8) if batch_first else (src, n, kdim or 8),
                    dtype=torch.float64)
    for masks in _mask_cases(n, 2, tgt, src):
        a = mha(q, k, k, need_weights=need_weights, average_attn_weights=average, **masks)
        b = proj(q, k, k, need_weights=need_weights, average_attn_weights=average, **masks)
        assert torch.allclose(a[0], b[0], atol=1e-12), masks.keys()
        assert (a[1] is None) == (b[1] is None)
        if a[1] is not None:
            assert torch.allclose(a[1], b[1], atol=1e-12)
    back = proj.to_mha()
    assert torch.allclose(back(q, k, k)[0], mha(q, k, k)[0], atol=1e-12)


def test_causal_unbatched_and_properties():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).double().eval()
    proj = ProjectedMultiheadAttention.from_mha(mha)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    cm = nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)
    for nw in (False, True):
        assert torch.allclose(mha(x, x, x, attn_mask=cm, is_causal=True, need_weights=nw)[0],
                              proj(x, x, x, attn_mask=cm, is_causal=True, need_weights=nw)[0])
    u = x[0]
    assert torch.allclose(mha(u, u, u)[0], proj(u, u, u)[0])
    assert torch.allclose(mha(u, u, u)[1], proj(u, u, u)[1])
    assert torch.equal(proj.in_proj_weight, mha.in_proj_weight)
    assert torch.equal(proj.in_proj_bias, mha.in_proj_bias)
    with pytest.raises(RuntimeError, match="is_causal"):
        proj(x, x, x, is_causal=True)


def test_training_mode_and_gradients_flow_to_projections():
    mha = nn.MultiheadAttention(8, 2, dropout=0.0)
    proj = ProjectedMultiheadAttention.from_mha(mha)
    assert proj.training
    x = torch.randn(4, 2, 8)
    proj(x, x, x)[0].sum().backward()
    assert all(p.grad is not None for p in proj.parameters())


def test_unsupported_options_are_refused():
    with pytest.raises(UnsupportedLayerError, match="add_bias_kv"):
        ProjectedMultiheadAttention.from_mha(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(UnsupportedLayerError, match="add_zero_attn"):
        ProjectedMultiheadAttention.from_mha(nn.MultiheadAttention(8, 2, add_zero_attn=True))
