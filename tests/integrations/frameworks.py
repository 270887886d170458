"""Import Lightning / transformers for the adapter tests, or skip cleanly."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

import pytest


def _torchvision_broken() -> bool:
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision")
    except Exception:  # noqa: BLE001 - e.g. a build for another torch: its C ops fail to load
        for key in [k for k in sys.modules if k.startswith("torchvision.")]:
            del sys.modules[key]
        return True
    return False


def import_or_skip(name: str) -> ModuleType:
    """`importlib.import_module(name)`, skipping the test on any import-time failure. A
    torchvision build that does not load is hidden first (the adapters do not need it)."""
    if importlib.util.find_spec(name.split(".")[0]) is None:
        pytest.skip(f"{name.split('.')[0]} is not installed")
    if _torchvision_broken():
        sys.modules["torchvision"] = None  # type: ignore[assignment]
    try:
        return importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - any failure of an optional framework skips
        pytest.skip(f"{name} does not import here: {type(e).__name__}: {e}")
