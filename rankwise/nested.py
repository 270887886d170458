"""`map_tensors`: one function applied to every tensor of a model's inputs or a batch, however
they are nested: a tensor, tuples and lists of positional inputs (a named tuple keeps its
type), mappings of keyword inputs such as a tokenizer's `BatchEncoding` (returned as a dict).
Anything else is returned as it is."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch


def map_tensors(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """`obj` with every tensor `t` inside it replaced by `fn(t)` (see the module docstring)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(fn, v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(map_tensors(fn, v) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(fn, v) for v in obj)
    return obj


__all__ = ["map_tensors"]
