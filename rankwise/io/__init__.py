"""Files: atomic writes (`atomic.py`), saved models as safetensors + JSON (`model_file.py`),
the deployment copy in another precision (`export_precision.py`)."""

from __future__ import annotations

from rankwise.io.atomic import atomic_write
from rankwise.io.model_file import CONFIG, WEIGHTS, load, read_config, save, saved_input_shape

__all__ = ["CONFIG", "WEIGHTS", "atomic_write", "load", "read_config", "save", "saved_input_shape"]
