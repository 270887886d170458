"""HF Conv1D and nn.MultiheadAttention: converted, factorized, restored, back to dense."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rankwise.errors import RankError
from rankwise.layers import FactorizedLayer
from rankwise.layers.foreign import convert_for, is_hf_conv1d
from rankwise.layers.mha import ProjectedMultiheadAttention
from rankwise.surgery.decompose import decompose, to_dense


class Conv1D(nn.Module):
    """Same contract as `transformers.pytorch_utils.Conv1D`: `y = x W + b`, `W (in, out)`."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = x.size()[:-1] + (self.nf,)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(size_out)


Conv1D.__module__ = "transformers.pytorch_utils"  # what the detection keys on


class Block(nn.Module):
    def __init__(self, d: int = 24) -> None:
        super().__init__()
        self.c_attn = Conv1D(3 * d, d)
        self.c_proj = Conv1D(d, 3 * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(torch.tanh(self.c_attn(x)))


class SelfAttention(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def _low_rank_conv1d(m: Conv1D, r: int) -> None:
    with torch.no_grad():
        nx, nf = m.weight.shape
        m.weight.copy_(torch.randn(nx, r) @ torch.randn(r, nf) / nx)


def test_hf_conv1d_is_factorized_exactly_and_comes_back():
    torch.manual_seed(0)
    model = Block()
    _low_rank_conv1d(model.c_attn, 3)
    assert is_hf_conv1d(model.c_attn) and not is_hf_conv1d(nn.Linear(2, 2))
    x = torch.randn(2, 5, 24)
    new, rep = decompose(model, rank="energy:1.0", example_inputs=(x,))
    rows = {r.name: r for r in rep.rows}
    assert rows["c_attn"].format == "svd" and rows["c_attn"].rank == 3
    assert rows["c_attn"].macs_before == 5 * 24 * 72  # tokens × in × out, per sample
    assert isinstance(new.c_attn, FactorizedLayer)
    assert type(new.c_proj) is Conv1D  # full rank: not factorized, the original is back
    assert torch.allclose(new(x), model(x), atol=1e-5)
    dense = to_dense(new)
    assert type(dense.c_attn) is Conv1D and dense.c_attn.weight.shape == (24, 72)
    assert torch.allclose(dense(x), model(x), atol=1e-5)


def test_mha_projections_factorized_and_exact_at_full_energy():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        q, k, v = mha.in_proj_weight.chunk(3, 0)
        q.copy_(torch.randn(16, 2) @ torch.randn(2, 16))
    model = SelfAttention(mha).eval()
    x = torch.randn(2, 7, 16)
    new, rep = decompose(model, rank="energy:1.0", example_inputs=(x,))
    assert isinstance(new.attn, ProjectedMultiheadAttention)
    rows = {r.name: r for r in rep.rows}
    assert rows["attn.q_proj"].format == "svd" and rows["attn.q_proj"].rank == 2
    assert rows["attn.k_proj"].format is None and "kept dense" in rows["attn.k_proj"].note
    assert rep.totals["params_after"] == sum(p.numel() for p in new.parameters())
    y, w = new.attn(x, x, x)
    y0, w0 = mha(x, x, x)
    assert torch.allclose(y, y0, atol=1e-5) and torch.allclose(w, w0, atol=1e-5)
    back = to_dense(new)
    assert type(back.attn) is nn.MultiheadAttention
    assert torch.allclose(back.attn(x, x, x)[0], y0, atol=1e-5)


def test_mha_inside_transformer_encoder_layer():
    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    x = torch.randn(3, 5, 16)
    new, rep = decompose(layer, rank="ratio:0.25", example_inputs=(x,))
    assert isinstance(new.self_attn, ProjectedMultiheadAttention)
    assert isinstance(new.self_attn.q_proj, FactorizedLayer)
    assert new(x).shape == x.shape
    assert rep.totals["params_after"] == sum(p.numel() for p in new.parameters())


def test_mha_with_bias_kv_stays_dense_with_reason():
    mha = nn.MultiheadAttention(8, 2, add_bias_kv=True)
    model = nn.Sequential()
    model.attn = mha
    new, rep = decompose(model, rank=2)
    assert type(new.attn) is nn.MultiheadAttention
    assert rep.rows[0].name == "attn" and "add_bias_kv" in rep.rows[0].note


def test_convert_for_rebuilds_the_paths_a_saved_model_needs():
    torch.manual_seed(3)
    model = SelfAttention(nn.MultiheadAttention(16, 2, batch_first=True)).eval()
    x = torch.randn(2, 5, 16)
    new, rep = decompose(model, rank="ratio:0.25", example_inputs=(x,))
    names = {r.name for r in rep.rows if r.format is not None}
    base = SelfAttention(nn.MultiheadAttention(16, 2, batch_first=True)).eval()
    done = convert_for(base, names)
    assert [c.name for c in done] == ["attn"]
    for n in names:  # every factorized path exists again: place the layers, load the weights
        parent, child = n.rsplit(".", 1)
        setattr(base.get_submodule(parent), child, copy.deepcopy(new.get_submodule(n)))
    base.load_state_dict(new.state_dict())
    assert torch.allclose(base(x), new(x))


def test_failed_inplace_decompose_leaves_no_converted_module():
    model = SelfAttention(nn.MultiheadAttention(16, 2, batch_first=True))
    with pytest.raises(RankError):
        decompose(model, rank=99, inplace=True)  # rank above every projection's max
    assert type(model.attn) is nn.MultiheadAttention
