"""One forward pass on the caller's example inputs: layer input shapes and model MACs.

`example_inputs` follows `torch.export`: a tuple of positional args, or `(args, kwargs)` with
`args` a tuple and `kwargs` a dict; a single tensor or a dict (kwargs only) is accepted too.
MACs follow `rankwise.analysis.profile` (weight multiply-accumulates of conv/linear layers per
sample, dimension 0 of every traced input is the batch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from rankwise.analysis.profile import (
    dense_macs,
    example_input,
    factorized_macs,
    record_input_shapes,
)
from rankwise.errors import ConfigError
from rankwise.layers.base import FactorizedLayer
from rankwise.nested import map_tensors

Example = tuple[tuple[Any, ...], dict[str, Any]]


def as_example(example_inputs: Any, input_shape: Sequence[int] | None,
               model: nn.Module) -> Example | None:
    """Normalize `example_inputs` to `(args, kwargs)`; `input_shape` (deprecated) gives zeros of
    shape `(1, *input_shape)`; None when neither is given."""
    if example_inputs is not None and input_shape is not None:
        raise ConfigError("pass example_inputs= or input_shape=, not both (input_shape is the "
                          "deprecated shorthand for example_inputs=(torch.zeros(1, *shape),))")
    if example_inputs is None:
        if input_shape is None:
            return None
        return (example_input(model, input_shape),), {}
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):  # a dict, or a tokenizer's BatchEncoding
        return (), dict(example_inputs)
    if (isinstance(example_inputs, tuple) and len(example_inputs) == 2
            and isinstance(example_inputs[0], (tuple, list))
            and isinstance(example_inputs[1], dict)):
        return tuple(example_inputs[0]), dict(example_inputs[1])
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise ConfigError(f"example_inputs must be a tuple of args, (args, kwargs), a tensor or a "
                      f"dict of kwargs, got {type(example_inputs).__name__}")


def example_on(example: Example, device: torch.device | str) -> Example:
    """`example` with every tensor moved to `device` (the meta device for a model built there)."""
    return map_tensors(lambda t: t.to(device), example)


def trace(model: nn.Module, example: Example,
          modules: dict[str, nn.Module]) -> dict[str, tuple[int, ...]]:
    """Shape of the first tensor input each module in `modules` receives, in call order
    (`analysis.profile.record_input_shapes`); `ConfigError` naming the fix if the forward pass
    on the example fails."""
    args, kwargs = example
    try:
        return record_input_shapes(model, args, kwargs, modules)
    except (RuntimeError, ValueError, TypeError, IndexError, AttributeError) as e:
        shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
        raise ConfigError(
            f"forward pass on the example inputs (tensor shapes {shapes}) failed: "
            f"{type(e).__name__}: {e}; pass example_inputs= (or input_shape=) the model accepts "
            "(a tuple of args, or (args, kwargs))") from e


def counted_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Top-level factorized layers, their conv/linear children, and dense conv/linears."""
    out: dict[str, nn.Module] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (FactorizedLayer, nn.Conv2d, nn.Linear)):
            out[name] = mod
    return out


def model_macs(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> int:
    """Total MACs per sample from traced `shapes` of `counted_layers(model)` (profile rules)."""
    total, inside = 0, []
    for name, mod in counted_layers(model).items():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(mod, FactorizedLayer):
            inside.append(name)
            subs = {f"{name}.{n}": m for n, m in mod.named_modules()
                    if n and isinstance(m, (nn.Conv2d, nn.Linear))}
            if subs:
                total += sum(dense_macs(m, shapes[n]) for n, m in subs.items() if n in shapes)
            elif name in shapes:
                total += factorized_macs(mod, shapes[name])
        elif name in shapes:
            total += dense_macs(mod, shapes[name])
    return total
