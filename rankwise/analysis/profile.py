"""Params / MACs / latency tables for a model (`profile_model`).

Counting rules:
- params = `numel` of every parameter (shared parameters counted once);
- MACs = multiply-accumulates of every conv / matmul / attention op of one forward pass **per
  sample** (`rankwise.analysis.macs`: `torch.utils.flop_counter`, FLOPs / 2; bias, norms and
  activations excluded; the fvcore convention). Rows: each dense `nn.Conv2d` / `nn.Linear` and
  each factorized layer (everything run inside it), then one row per other module that runs such
  ops itself (attention matmuls, e.g. `self_attention` of a ViT block). A module called several
  times is counted at every call. Meta-device models are counted too (shapes only).
- latency: `rankwise.analysis.latency.measure_latency` (median / IQR in ms, fp32 or bf16
  autocast), of the deployed copy with `deploy` (`io.export_precision.to_deploy`), or of the
  ONNX graph in ONNX Runtime.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from rankwise.analysis.latency import (
    PRECISIONS,
    RUNTIMES,
    eval_mode,
    example_input,
    measure_latency,
    onnx_runner,
)
from rankwise.analysis.macs import Inputs, count_macs, own_macs
from rankwise.analysis.profile_result import ModelProfile, ProfileRow
from rankwise.errors import ConfigError
from rankwise.io.export_precision import to_deploy
from rankwise.layers.base import FactorizedLayer
from rankwise.layers.shapes import ConvSpec, LinearSpec, conv2d_macs, linear_macs

DENSE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def record_input_shapes(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                        modules: dict[str, nn.Module]) -> dict[str, tuple[int, ...]]:
    """Shape of the first tensor input each module in `modules` receives, in call order, from
    one forward pass `model(*args, **kwargs)` in eval mode under `no_grad` (BatchNorm statistics
    untouched). Modules never called are absent. The forward pass's own exception propagates."""
    seen: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, mod in modules.items():
        def hook(_m: nn.Module, a: tuple[Any, ...], _name: str = name) -> None:
            if _name not in seen and a and isinstance(a[0], torch.Tensor):
                seen[_name] = tuple(a[0].shape)
        handles.append(mod.register_forward_pre_hook(hook))
    try:
        with eval_mode(model), torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return seen


def trace_inputs(model: nn.Module, input_shape: Sequence[int],
                 modules: dict[str, nn.Module]) -> dict[str, tuple[int, ...]]:
    """`record_input_shapes` on zeros of shape `(1, *input_shape)`; `ConfigError` if the
    forward pass fails (usually a wrong `input_shape`)."""
    try:
        return record_input_shapes(model, (example_input(model, input_shape),), {}, modules)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise ConfigError(
            f"forward pass on zeros of input_shape={tuple(input_shape)} failed: {e}; pass the "
            "input shape the model expects, without the batch dimension (e.g. 3,32,32)"
        ) from e


def tokens_of(shape: tuple[int, ...]) -> int:
    """Rows a linear sees per sample for an input of `shape` = (1, ..., in_features)."""
    n = 1
    for s in shape[1:-1]:
        n *= int(s)
    return n


def dense_macs(layer: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of a dense conv/linear for one sample with input of `input_shape` (batch first)."""
    if isinstance(layer, nn.Conv2d):
        return conv2d_macs(ConvSpec.from_conv(layer), (input_shape[-2], input_shape[-1]))
    return linear_macs(LinearSpec.from_linear(layer), tokens_of(input_shape))


def factorized_macs(layer: FactorizedLayer, input_shape: tuple[int, ...]) -> int:
    """Closed-form MACs of a factorized layer for one sample with input of `input_shape`."""
    if layer.dense_type is nn.Linear:
        return tokens_of(input_shape) * layer.macs(None)
    return layer.macs((input_shape[-2], input_shape[-1]))


def unique_params(module: nn.Module) -> int:
    """Sum of `numel` over the module's parameters, each shared tensor once."""
    return sum(p.numel() for p in module.parameters())


def _counted_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Top-level factorized layers and dense conv/linears not inside one, by name."""
    out: dict[str, nn.Module] = {}
    inside: list[str] = []
    for name, mod in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(mod, FactorizedLayer):
            out[name] = mod
            inside.append(name)
        elif isinstance(mod, DENSE_TYPES):
            out[name] = mod
    return out


def _run_count(model: nn.Module, inputs: Inputs, what: str) -> Any:
    try:
        with eval_mode(model), torch.no_grad():
            return count_macs(model, inputs)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise ConfigError(
            f"forward pass on {what} failed: {e}; pass the input shape the model expects, "
            "without the batch dimension (e.g. 3,32,32), or example_inputs= for models that "
            "take token ids or several inputs"
        ) from e


def count(model: nn.Module, input_shape: Sequence[int] | None = None,
          example_inputs: Inputs | None = None) -> tuple[list[ProfileRow], int, int]:
    """Rows, total params and total MACs per sample of one forward pass of `model`.

    Inputs: zeros `(1, *input_shape)`, or `example_inputs` (a tensor, a tuple of positional
    inputs or a dict of keyword inputs; MACs are divided by its batch size). Raises
    `ConfigError` when the forward pass fails.
    """
    if example_inputs is not None:
        mc = _run_count(model, example_inputs, "example_inputs")
    elif input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        mc = _run_count(model, example_input(model, shape), f"zeros of input_shape={shape}")
    else:
        raise ConfigError("count needs input_shape (without batch dim) or example_inputs")
    b = max(mc.batch, 1)
    layers = _counted_layers(model)
    rows: list[ProfileRow] = []
    counted_params = 0
    for name, mod in layers.items():
        macs = mc.per_module.get(name, 0) // b
        if isinstance(mod, FactorizedLayer):
            w_shape = _spec_shape(mod)
            fmt, rank = mod.format, mod.rank
        else:
            w_shape, fmt, rank = tuple(mod.weight.shape), None, None
        params = unique_params(mod)
        counted_params += params
        rows.append(ProfileRow(name, type(mod).__name__, w_shape, fmt, rank, params, macs))
    covered = {id(m) for x in layers.values() for m in x.modules()}
    inside = tuple(n + "." for n in layers)
    for name, macs in own_macs(mc, model).items():
        mod = model.get_submodule(name)
        if id(mod) in covered or name.startswith(inside):
            continue
        covered.add(id(mod))
        params = sum(p.numel() for p in mod.parameters(recurse=False))
        counted_params += params
        rows.append(ProfileRow(name or "(root)", type(mod).__name__, None, None, None, params,
                               macs // b))
    total_params = unique_params(model)
    other = total_params - counted_params
    if other > 0:
        kinds = sorted({type(m).__name__ for m in model.modules()
                        if id(m) not in covered and any(True for _ in m.parameters(recurse=False))})
        rows.append(ProfileRow("(other)", ", ".join(kinds), None, None, None, other, 0))
    total_macs = mc.total // b
    for r in rows:
        r.params_share = r.params / total_params if total_params else 0.0
        r.macs_share = r.macs / total_macs if total_macs else 0.0
    return rows, total_params, total_macs


def _spec_shape(layer: FactorizedLayer) -> tuple[int, ...]:
    s = layer.dense_spec
    if isinstance(s, LinearSpec):
        return (s.out_features, s.in_features)
    return (s.out_channels, s.in_channels // s.groups, *s.kernel_size)


def _input_shape_of(inputs: Inputs) -> tuple[int, ...]:
    t = inputs if isinstance(inputs, torch.Tensor) else next(
        (v for v in (inputs.values() if isinstance(inputs, Mapping) else inputs)
         if isinstance(v, torch.Tensor)), None)
    return tuple(int(s) for s in t.shape[1:]) if t is not None else ()


def profile_model(model: nn.Module, input_shape: Sequence[int] | None = None,
                  baseline: nn.Module | ModelProfile | None = None, latency: bool = True,
                  batch_sizes: Sequence[int] = (1, 8), device: torch.device | str = "cpu",
                  min_run_time: float = 0.2, example_inputs: Inputs | None = None,
                  precision: str = "fp32", runtime: str = "torch",
                  deploy: bool = False) -> ModelProfile:
    """Profile `model` on inputs of shape `(B, *input_shape)` (zeros), or on `example_inputs`
    (tensor / tuple / dict of keyword inputs, re-batched to each `B` for latency).

    `precision`: "fp32", or "bf16" (latency under bfloat16 autocast, on CPU too). `runtime`:
    "torch" (eager), or "onnxruntime" (the model exported to a float32 ONNX graph and timed in
    ONNX Runtime on CPU, `io.onnx_file`; fp32 only). `deploy`: time the deployed copy
    (`io.export_precision.to_deploy`: BN folded, weights and activations in `precision`,
    channels_last; what `rankwise export` writes) instead of autocast over the float32 model; the
    baseline is deployed the same way; image inputs only. `baseline`
    (a dense model or its profile) adds `params_ratio`, `macs_ratio` and, when both have latency,
    `speedup` per batch size (= baseline median / model median). The model is moved to `device`
    on a copy when it lives elsewhere; the caller's model is not modified. A model on the meta
    device is counted in place; asking it for latency raises `ConfigError`.
    """
    if example_inputs is None and not input_shape:
        raise ConfigError("profile_model needs input_shape without the batch dim, e.g. (3, 32, 32),"
                          " or example_inputs=")
    if precision not in PRECISIONS:
        raise ConfigError(f"profile_model: precision={precision!r}, choose one of {PRECISIONS}")
    if runtime not in RUNTIMES:
        raise ConfigError(f"profile_model: runtime={runtime!r}, choose one of {RUNTIMES}")
    if runtime == "onnxruntime" and (precision != "fp32" or torch.device(device).type != "cpu"):
        raise ConfigError("profile_model: runtime='onnxruntime' times the float32 graph on CPU; "
                          "pass precision='fp32' and device='cpu' (CLI: --precision fp32)")
    if deploy and runtime != "torch":
        raise ConfigError("profile_model: deploy=True times eager PyTorch; ONNX Runtime folds BN "
                          "itself, so drop deploy (CLI: --deploy) for runtime='onnxruntime'")
    if deploy and example_inputs is not None:
        raise ConfigError("profile_model: deploy=True deploys image models (one (B, C, H, W) "
                          "input); drop deploy (CLI: --deploy) for models with keyword inputs")
    p = next(iter(model.parameters()), None)
    if p is not None and p.is_meta:
        if latency:
            raise ConfigError("profile_model: the model is on the meta device (no weights), so "
                              "latency cannot be measured; pass latency=False (CLI: --no-latency)")
        dev = p.device
    else:
        dev = torch.device(device)
        if p is not None and p.device != dev:
            model = copy.deepcopy(model).to(dev)
    if example_inputs is not None:
        shape = _input_shape_of(example_inputs)
    else:
        shape = tuple(int(s) for s in input_shape or ())
    rows, params, macs = count(model, shape, example_inputs)
    prof = ModelProfile(rows, params, macs, shape, precision=precision, runtime=runtime,
                        deploy=deploy)
    if latency:
        if runtime == "onnxruntime":
            timed = onnx_runner(model, shape, example_inputs)
        else:  # a deployed copy carries its precision in its weights: no autocast
            timed = to_deploy(model, precision) if deploy else model
        for bs in batch_sizes:
            prof.latency[int(bs)] = measure_latency(timed, shape, int(bs), dev, min_run_time,
                                                    example_inputs=example_inputs,
                                                    precision="fp32" if deploy else precision)
    if baseline is not None:
        if isinstance(baseline, nn.Module):
            baseline = profile_model(baseline, shape, latency=latency, batch_sizes=batch_sizes,
                                     device=device, min_run_time=min_run_time,
                                     example_inputs=example_inputs, precision=precision,
                                     runtime=runtime, deploy=deploy)
        prof.baseline = {
            "params": baseline.params,
            "macs": baseline.macs,
            "params_ratio": params / baseline.params if baseline.params else float("nan"),
            "macs_ratio": macs / baseline.macs if baseline.macs else float("nan"),
            "speedup": {bs: baseline.latency[bs]["median_ms"] / v["median_ms"]
                        for bs, v in prof.latency.items() if bs in baseline.latency},
        }
    return prof
