"""Post-training quantization: symmetric per-output-channel int8 weights.

What runs quantized: **storage only.** `quantize_model` stores every conv/linear weight as int8
plus one float32 scale per output channel; `dequantize` turns that back into a float model whose
weights are `q * scale` (fake-quant), and that float model is what gets evaluated — compute stays
in float32, so the accuracy measured is the accuracy of the int8 weights, not of int8 arithmetic.
`quantize_dynamic_linear` is a separate, optional real-int8 path (torch.ao dynamic quantization of
`nn.Linear` only, CPU; torch.ao.quantization is deprecated upstream).

Scheme per weight W of shape (n, ...), channel i = W[i]:
    scale_i = max|W[i]| / 127 (float32),  q = clamp(round(W / scale_i), -127, 127) (int8),
    round = round-half-to-even. A channel of zeros gets scale 0 and q = 0 (no division by zero).
    Guarantee: |W - q * scale_i| <= scale_i / 2 elementwise (up to float32 rounding).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from rankwise.compress.prune import prunable_layers
from rankwise.errors import CheckpointError, ConfigError

QMAX = 127


@dataclass
class QuantizedState:
    """A model's state dict with conv/linear weights stored as int8.

    qweight: name -> int8 tensor, same shape as the float weight (e.g. "layer1.0.conv1.weight").
    scale: name -> float32 tensor (n,), one per output channel, same keys as `qweight`.
    weight_dtype: name -> original float dtype name ("float32", ...), restored on dequantize.
    other: every remaining state-dict entry unchanged (biases, BatchNorm params and buffers,
        parameters of layers that are not nn.Conv2d/nn.Linear).
    """

    qweight: dict[str, torch.Tensor] = field(default_factory=dict)
    scale: dict[str, torch.Tensor] = field(default_factory=dict)
    weight_dtype: dict[str, str] = field(default_factory=dict)
    other: dict[str, torch.Tensor] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Raw (uncoded) bytes of all tensors held."""
        ts = [*self.qweight.values(), *self.scale.values(), *self.other.values()]
        return sum(t.numel() * t.element_size() for t in ts)

    def num_quantized(self) -> int:
        """Number of int8 weight entries."""
        return sum(t.numel() for t in self.qweight.values())


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization along dim 0.

    Args: w float tensor (n, ...). Returns (q int8 (n, ...), scale float32 (n,)).
    """
    if not w.is_floating_point():
        raise TypeError(f"expected a floating-point weight, got {w.dtype}")
    wd = w.detach().to(torch.float64)
    amax = wd.abs().flatten(1).amax(dim=1) if wd.dim() > 1 else wd.abs()
    scale = (amax / QMAX).to(torch.float32)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale)).to(torch.float64)
    shape = (-1,) + (1,) * (wd.dim() - 1)
    q = torch.round(wd / safe.view(shape)).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


def dequantize_per_channel(
    q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """q int8 (n, ...) and scale (n,) -> float tensor q * scale of `dtype`."""
    shape = (-1,) + (1,) * (q.dim() - 1)
    return (q.to(torch.float32) * scale.to(torch.float32).view(shape)).to(dtype)


def quantize_model(
    model: nn.Module,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> QuantizedState:
    """Quantize the weight of every nn.Conv2d / nn.Linear (factorized layers' children included).

    `include` / `exclude` are fnmatch patterns on module paths, as in `compress.prune`.
    The model is not modified. Tensors in the result are detached CPU copies.
    """
    names = {f"{n}.weight" if n else "weight" for n, _ in prunable_layers(model, include, exclude)}
    sd = model.state_dict()
    masked = [k.removesuffix("_mask") for k in sd if k.endswith("weight_mask")]
    if masked:
        raise ConfigError(
            f"{masked[0]} still carries a torch.nn.utils.prune mask; make pruning permanent "
            "(prune.remove, as compress.magnitude_prune does) before quantizing"
        )
    state = QuantizedState()
    for key, t in sd.items():
        t = t.detach().cpu()
        if key in names and t.is_floating_point():
            q, s = quantize_per_channel(t)
            state.qweight[key], state.scale[key] = q, s
            state.weight_dtype[key] = str(t.dtype).removeprefix("torch.")
        else:
            state.other[key] = t.clone()
    return state


def dequantize_state_dict(state: QuantizedState) -> dict[str, torch.Tensor]:
    """A plain float state dict: quantized weights replaced by `q * scale`."""
    out = dict(state.other)
    for key, q in state.qweight.items():
        if key not in state.scale:
            raise CheckpointError(f"quantized weight {key!r} has no scale; the state is incomplete")
        dtype = getattr(torch, state.weight_dtype.get(key, "float32"))
        out[key] = dequantize_per_channel(q, state.scale[key], dtype)
    return out


def dequantize(state: QuantizedState, model: nn.Module) -> nn.Module:
    """A deep copy of `model` (same architecture as the quantized one) holding `q * scale` weights.

    Compute in the returned model is ordinary float; only the weight values are quantized.
    Raises `CheckpointError` if the keys or shapes do not match `model`.
    """
    out = copy.deepcopy(model)
    try:
        out.load_state_dict(dequantize_state_dict(state), strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"quantized state does not match {type(model).__name__}: {e}; pass the same "
            "architecture (same factorized ranks) the state was quantized from"
        ) from e
    return out


def fake_quantize(model: nn.Module, **kw) -> nn.Module:
    """`dequantize(quantize_model(model, **kw), model)`: the float model to evaluate for int8."""
    return dequantize(quantize_model(model, **kw), model)


def quantize_dynamic_linear(model: nn.Module) -> nn.Module:
    """Real int8 execution of nn.Linear layers via `torch.ao.quantization.quantize_dynamic`.

    Weights int8 (per-tensor, torch's own scheme), activations quantized on the fly, int8 GEMM on
    CPU; convs stay float. Returns a new model in eval mode. The torch.ao API is deprecated upstream
    and may disappear in a later torch; this is a measurement aid, not the stored format.
    """
    from torch.ao.quantization import quantize_dynamic

    m = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)
