"""MACs of every matmul-like op of a forward pass, attributed to modules (`count_macs`).

Counted with `torch.utils.flop_counter.FlopCounterMode`: convolutions, `mm` / `addmm` / `bmm` /
`baddbmm` (so `nn.Linear`, `matmul`, `einsum` and attention written with matmuls) and fused
scaled-dot-product attention, plus kernels PyTorch's table lacks: CPU's fused attention and the
eval fast paths of `nn.MultiheadAttention` / `nn.TransformerEncoderLayer`.
MACs = FLOPs / 2 for all of them (each multiply-accumulate is 2 FLOPs); bias additions, norms,
activations, pooling and softmax are not counted. This is the fvcore / ptflops convention for
convolutions and matmuls.

A module's *own* MACs are those of ops it runs itself, outside its sub-modules (e.g. the
attention matmuls of an `nn.MultiheadAttention`, the TT contractions of a `TTLinear`). Every
call is counted, so a module applied twice costs twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

Inputs = torch.Tensor | Sequence[Any] | Mapping[str, Any]


def _cpu_sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                    out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of `aten._scaled_dot_product_flash_attention_for_cpu`: Q Kᵀ and P V,
    `2·B·H·L·S·(E + Ev)`."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _mha_flops(query: Any, key: Any, value: Any, embed_dim: int, num_head: int, *args: Any,
               out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of `aten._native_multi_head_attention` (the eval fast path of
    `nn.MultiheadAttention`): q/k/v projections `2·B·(L + 2S)·E²`, Q Kᵀ and P V `4·B·L·S·E`,
    output projection `2·B·L·E²`."""
    b, q_len, e = (int(d) for d in query)
    s = int(key[-2])
    return 2 * b * (q_len + 2 * s) * e * e + 4 * b * q_len * s * e + 2 * b * q_len * e * e


def _encoder_layer_flops(src: Any, embed_dim: int, num_heads: int, qkv_weight: Any,
                         qkv_bias: Any, proj_weight: Any, proj_bias: Any, *args: Any,
                         out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of `aten._transformer_encoder_layer_fwd` (the eval fast path of
    `nn.TransformerEncoderLayer`): self-attention as `_mha_flops` plus the two FFN linears."""
    ffn_weight_1 = args[7]  # (F, E), after use_gelu, norm_first, eps and the four norm tensors
    b, t, e = (int(d) for d in src)
    return _mha_flops(src, src, src, e, num_heads) + 4 * b * t * e * int(ffn_weight_1[0])


def _extra_formulas() -> dict[Any, Any]:
    """Formulas for fused CPU / fast-path kernels that PyTorch's FLOP table lacks."""
    table = {"_scaled_dot_product_flash_attention_for_cpu": _cpu_sdpa_flops,
             "_native_multi_head_attention": _mha_flops,
             "_transformer_encoder_layer_fwd": _encoder_layer_flops}
    ops = torch.ops.aten
    return {getattr(ops, name): f for name, f in table.items() if hasattr(ops, name)}


@dataclass
class MacCount:
    """MACs of one forward pass over the whole batch.

    `total`: all counted ops; `per_module[name]`: MACs inside module `name` (its sub-modules
    included; "" is the root); `per_op`: MACs by aten op name (e.g. "convolution", "bmm");
    `batch`: the batch size the inputs carried (divide by it for per-sample numbers).
    """

    total: int
    per_module: dict[str, int]
    per_op: dict[str, int]
    batch: int


def call_model(model: nn.Module, inputs: Inputs) -> Any:
    """`model(inputs)` for a tensor, `model(*inputs)` for a sequence, `model(**inputs)` for a
    mapping (Hugging Face style keyword inputs)."""
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*inputs)


def batch_of(inputs: Inputs) -> int:
    """Size of dim 0 of the first tensor in `inputs` (1 if there is none)."""
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.dim() else 1
    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    for v in values:
        if isinstance(v, torch.Tensor) and v.dim():
            return int(v.shape[0])
    return 1


def count_macs(model: nn.Module, inputs: Inputs) -> MacCount:
    """Run `model` once on `inputs` (as given: call in eval mode and `no_grad` outside) under a
    FLOP counter; MACs per module and per op. Works on meta tensors (shapes only)."""
    root = type(model).__name__
    with FlopCounterMode(display=False, depth=None, custom_mapping=_extra_formulas()) as fc:
        call_model(model, inputs)
    counts = fc.get_flop_counts()
    per_module: dict[str, int] = {}
    for key, ops in counts.items():
        if key == "Global":
            continue
        if key == root:
            name = ""
        elif key.startswith(root + "."):
            name = key[len(root) + 1:]
        else:
            continue
        per_module[name] = sum(int(v) for v in ops.values()) // 2
    per_op = {str(op).split(".")[-1]: int(v) // 2 for op, v in counts.get("Global", {}).items()}
    total = sum(int(v) for v in counts.get("Global", {}).values()) // 2
    return MacCount(total, per_module, per_op, batch_of(inputs))


def own_macs(count: MacCount, model: nn.Module) -> dict[str, int]:
    """MACs each module runs outside its direct children, for modules where that is > 0."""
    out: dict[str, int] = {}
    for name, mod in model.named_modules():
        inside = count.per_module.get(name, 0)
        if not inside:
            continue
        prefix = f"{name}." if name else ""
        children = sum(count.per_module.get(prefix + c, 0) for c, _ in mod.named_children())
        if inside > children:
            out[name] = inside - children
    return out
