"""Test set-up for the optional model libraries (torchvision / timm / transformers / onnx).

The registry's torchvision 0.28.0 wheel is a CUDA build: with the CPU torch its import dies on
`register_fake("torchvision::nms")` because the compiled ops never load. Declaring the two op
schemas first lets the model code import (detection ops stay unusable). This shim lives in the
tests' set-up only; the library never patches torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import pytest
import torch

_KEEP: list[torch.library.Library] = []  # a Library un-registers its ops when collected


def _has_nms() -> bool:
    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute lookup is the check
    except (AttributeError, RuntimeError):
        return False
    return True


def torchvision_cpu_shim() -> None:
    """Declare `torchvision::nms` / `qnms` unless some torchvision build already did."""
    if _has_nms():
        return
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _KEEP.append(lib)


def require(name: str) -> ModuleType:
    """Import optional package `name` (behind the shim when torchvision is installed) or skip."""
    if name in ("torchvision", "timm") and importlib.util.find_spec("torchvision") is None:
        pytest.skip("optional dependency torchvision is not installed")
    if importlib.util.find_spec("torchvision") is not None:
        torchvision_cpu_shim()  # timm and transformers import torchvision when it is installed
    try:
        return importlib.import_module(name)
    except ImportError as e:
        pytest.skip(f"optional dependency {name} unavailable: {e}")
