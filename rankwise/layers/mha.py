"""`ProjectedMultiheadAttention`: `nn.MultiheadAttention` with its four projections as modules.

`nn.MultiheadAttention` keeps q/k/v in one bare `in_proj_weight (3E, E)` parameter and reads
`out_proj.weight` directly, so no projection can be swapped for a factorized layer. This module
computes the same function (Vaswani et al. 2017, Sec. 3.2.2) with `q_proj`, `k_proj`, `v_proj`
(`Linear(E|kdim|vdim → E)`) and `out_proj` (`Linear(E → E)`) as child modules that
`rankwise.decompose` may replace by any linear format. `from_mha` copies the weights;
`to_mha` builds the equivalent `nn.MultiheadAttention` back from the (dense) projections.

Supported: batched and unbatched inputs, `batch_first`, `kdim`/`vdim`, `key_padding_mask`,
`attn_mask` (bool or float, 2-D or 3-D), `is_causal`, `need_weights` / `average_attn_weights`,
dropout. Not supported (`from_mha` raises `UnsupportedLayerError`): `add_bias_kv`,
`add_zero_attn`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rankwise.errors import UnsupportedLayerError


def _dense_weight(m: nn.Module) -> torch.Tensor:
    w = getattr(m, "weight", None)
    if w is None and hasattr(m, "dense_weight"):
        w = m.dense_weight()
    return w


class ProjectedMultiheadAttention(nn.Module):
    """Multi-head attention over projection modules; call signature of `nn.MultiheadAttention`.

    `query (L, N, E)` (or `(N, L, E)` with `batch_first`, or `(L, E)` unbatched), `key`/`value`
    `(S, N, kdim|vdim)` → `(attn_output (L, N, E), weights (N, L, S) | (N, H, L, S) | None)`.
    """

    # TorchScript compiles `forward` only; the `in_proj_*` views are for eager callers
    __jit_unused_properties__ = ["in_proj_weight", "in_proj_bias"]

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 kdim: int | None = None, vdim: int | None = None, batch_first: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None
                 ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise UnsupportedLayerError(
                f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        kw = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, float(dropout)
        self.head_dim = embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.batch_first = batch_first
        # False disables nn.TransformerEncoderLayer's fused fast path, which would read
        # in_proj_weight and bypass the (factorized) projection modules.
        self._qkv_same_embed_dim = False
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias, **kw)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> ProjectedMultiheadAttention:
        """The same function as `mha`, weights copied (same dtype/device/training mode)."""
        if mha.bias_k is not None or mha.add_zero_attn:
            raise UnsupportedLayerError(
                "nn.MultiheadAttention with add_bias_kv or add_zero_attn is not supported; "
                "keep it dense (exclude it)")
        ref = mha.out_proj.weight
        e = mha.embed_dim
        out = cls(e, mha.num_heads, mha.dropout, mha.in_proj_bias is not None, mha.kdim, mha.vdim,
                  mha.batch_first, device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                ws = mha.in_proj_weight.chunk(3, 0)
            else:
                ws = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            bs = mha.in_proj_bias.chunk(3, 0) if mha.in_proj_bias is not None else (None,) * 3
            for proj, w, b in zip((out.q_proj, out.k_proj, out.v_proj), ws, bs, strict=True):
                proj.weight.copy_(w)
                if b is not None:
                    proj.bias.copy_(b)
            out.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                out.out_proj.bias.copy_(mha.out_proj.bias)
        out.train(mha.training)
        return out

    def to_mha(self) -> nn.MultiheadAttention:
        """The equivalent `nn.MultiheadAttention` (projections multiplied out if factorized)."""
        ref = _dense_weight(self.out_proj)
        bias = self.out_proj.bias is not None
        mha = nn.MultiheadAttention(self.embed_dim, self.num_heads, self.dropout, bias=bias,
                                    kdim=self.kdim, vdim=self.vdim, batch_first=self.batch_first,
                                    device=ref.device, dtype=ref.dtype)
        projs = (self.q_proj, self.k_proj, self.v_proj)
        with torch.no_grad():
            ws = [_dense_weight(p) for p in projs]
            if mha._qkv_same_embed_dim:
                mha.in_proj_weight.copy_(torch.cat(ws, 0))
            else:
                mha.q_proj_weight.copy_(ws[0])
                mha.k_proj_weight.copy_(ws[1])
                mha.v_proj_weight.copy_(ws[2])
            if bias:
                mha.in_proj_bias.copy_(torch.cat([p.bias for p in projs], 0))
                mha.out_proj.bias.copy_(self.out_proj.bias)
            mha.out_proj.weight.copy_(ref)
        mha.train(self.training)
        return mha

    @property
    def in_proj_weight(self) -> torch.Tensor | None:
        """`(3E, E)` effective q/k/v weight for code that reads it (None when kdim/vdim ≠ E)."""
        if self.kdim != self.embed_dim or self.vdim != self.embed_dim:
            return None
        return torch.cat([_dense_weight(p) for p in (self.q_proj, self.k_proj, self.v_proj)], 0)

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        """`(3E,)` q/k/v bias, or None."""
        if self.q_proj.bias is None:
            return None
        return torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias], 0)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same semantics as `nn.MultiheadAttention.forward` (see the class docstring)."""
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        tgt, bsz, _ = query.shape
        src = key.shape[0]
        h, hd = self.num_heads, self.head_dim
        key_padding_mask = F._canonical_mask(
            mask=key_padding_mask, mask_name="key_padding_mask",
            other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
            target_type=query.dtype)
        if is_causal and attn_mask is None:
            raise RuntimeError("need attn_mask if specifying the is_causal hint (as "
                               "nn.MultiheadAttention)")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None  # the causal hint goes to scaled_dot_product_attention
        else:
            attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None,
                                          other_name="", target_type=query.dtype,
                                          check_other=False)
            is_causal = False  # the (merged) mask is authoritative
        # Projections see batch-first (N, L, E) inputs, so tokens per sample are L.
        q = self.q_proj(query.transpose(0, 1)).transpose(0, 1)
        k = self.k_proj(key.transpose(0, 1)).transpose(0, 1)
        v = self.v_proj(value.transpose(0, 1)).transpose(0, 1)
        if attn_mask is not None and attn_mask.dim() == 2:
            attn_mask = attn_mask.unsqueeze(0)
        q = q.reshape(tgt, bsz * h, hd).transpose(0, 1)
        k = k.reshape(src, bsz * h, hd).transpose(0, 1)
        v = v.reshape(src, bsz * h, hd).transpose(0, 1)
        if key_padding_mask is not None:
            kpm = key_padding_mask.view(bsz, 1, 1, src).expand(-1, h, -1, -1)
            kpm = kpm.reshape(bsz * h, 1, src)
            attn_mask = kpm if attn_mask is None else attn_mask + kpm
        p = self.dropout if self.training else 0.0
        weights: torch.Tensor | None = None
        if need_weights:
            qs = q * math.sqrt(1.0 / hd)
            scores = (torch.baddbmm(attn_mask, qs, k.transpose(-2, -1)) if attn_mask is not None
                      else torch.bmm(qs, k.transpose(-2, -1)))
            scores = torch.softmax(scores, dim=-1)
            if p > 0.0:
                scores = F.dropout(scores, p=p)
            out = torch.bmm(scores, v)
            weights = scores.view(bsz, h, tgt, src)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            if attn_mask is not None:
                attn_mask = (attn_mask.unsqueeze(0) if attn_mask.size(0) == 1
                             else attn_mask.view(bsz, h, -1, src))
            out = F.scaled_dot_product_attention(
                q.view(bsz, h, tgt, hd), k.view(bsz, h, src, hd), v.view(bsz, h, src, hd),
                attn_mask, p, is_causal)
            out = out.permute(2, 0, 1, 3).reshape(tgt, bsz, self.embed_dim)
        if need_weights:
            out = out.transpose(0, 1).reshape(tgt, bsz, self.embed_dim)
        out = self.out_proj(out.transpose(0, 1))  # (N, L, E)
        if unbatched:
            out = out.squeeze(0)
            weights = weights.squeeze(0) if weights is not None else None
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"batch_first={self.batch_first}")
