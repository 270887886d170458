"""Which layers a latency plan times, and at which input: the candidates' names and modules, and
the input each one sees in one forward pass of the model on the example inputs.

The example is an input shape without batch (an image model, run on zeros), or the inputs
themselves: a tensor `(B, …)`, a tuple of positional tensors, or keyword tensors (a tokenizer's
`input_ids`, `attention_mask`). A layer's *extent* (`latency_table`) is what besides its
arguments sets its cost: a conv's input `(H, W)`, a linear's `(rows per sample, 1)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rankwise.analysis.macs import Inputs
from rankwise.analysis.profile import tokens_of, trace_inputs
from rankwise.errors import ConfigError
from rankwise.layers.shapes import Pair
from rankwise.surgery.trace import as_example, trace


def candidate_layers(model: nn.Module, candidates: Any) -> list[tuple[str, nn.Module]]:
    """(name, module) pairs from names, pairs, or objects with `.name` / `.module`; None: every
    `nn.Conv2d` and `nn.Linear` of `model`."""
    if candidates is None:
        return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    out = []
    for c in candidates:
        if isinstance(c, str):
            out.append((c, model.get_submodule(c)))
        elif isinstance(c, tuple):
            out.append((str(c[0]), c[1]))
        else:
            out.append((str(c.name), c.module))
    return out


def is_shape(x: Any) -> bool:
    """True for an input shape such as `(3, 32, 32)`: a non-empty sequence of ints."""
    return isinstance(x, Sequence) and not isinstance(x, str) and bool(x) and all(
        isinstance(s, int) for s in x)


def layer_inputs(model: nn.Module, example_inputs: Any,
                 layers: dict[str, nn.Module]
                 ) -> tuple[tuple[int, ...], Inputs | None, dict[str, tuple[int, ...]]]:
    """(input shape without batch, the inputs to time the model on or None, the input shape
    each layer of `layers` sees). `example_inputs`: an input shape, or anything
    `trace.as_example` takes (a tensor, positional args, keyword inputs, `(args, kwargs)`) as
    long as the inputs are all positional or all keyword (the model is timed on them)."""
    if is_shape(example_inputs):
        shape = tuple(int(s) for s in example_inputs)
        return shape, None, trace_inputs(model, shape, layers)
    args, kwargs = as_example(example_inputs, None, model)
    if args and kwargs:
        raise ConfigError("a latency budget runs the model on its example inputs: pass them "
                          "either positionally, example_inputs=(x,), or by keyword, "
                          "example_inputs={'input_ids': ids, ...}")
    first = next((t for t in (*args, *kwargs.values())
                  if isinstance(t, torch.Tensor) and t.dim()), None)
    if first is None:
        raise ConfigError("latency budget: example_inputs holds no tensor with a batch "
                          "dimension; pass e.g. torch.randn(1, C, H, W) or the tokenizer's "
                          "output (input_ids, attention_mask)")
    inputs: Inputs = kwargs if kwargs else (args[0] if len(args) == 1 else args)
    return tuple(first.shape[1:]), inputs, trace(model, (args, kwargs), layers)


def extent(module: nn.Module, seen: tuple[int, ...]) -> Pair:
    """A conv's input `(H, W)`; a linear's `(rows per sample, 1)` (see `latency_table`)."""
    if isinstance(module, nn.Linear):
        return (tokens_of(seen), 1)
    return (int(seen[-2]), int(seen[-1]))


__all__ = ["candidate_layers", "extent", "is_shape", "layer_inputs"]
