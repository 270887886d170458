"""Files: atomic writes (`atomic.py`), saved models as safetensors + JSON (`model_file.py`),
the deployment copy in another precision (`export_precision.py`).

`save`/`load` and friends are resolved lazily, so that importing `rankwise.io.atomic` (used by
every layer that writes a file) does not import the model-building code above it.
"""

from __future__ import annotations

import importlib
from typing import Any

from rankwise.io.atomic import atomic_write

_MODEL_FILE = ("CONFIG", "WEIGHTS", "load", "read_config", "save", "saved_input_shape")


def __getattr__(name: str) -> Any:
    if name in _MODEL_FILE:
        return getattr(importlib.import_module("rankwise.io.model_file"), name)
    raise AttributeError(f"module 'rankwise.io' has no attribute {name!r}")


__all__ = ["CONFIG", "WEIGHTS", "atomic_write", "load", "read_config", "save", "saved_input_shape"]
