"""Factorized replacements for dense layers, one class per format."""

import importlib

from rankwise.layers.base import FORMATS, FactorizedLayer, layer_from_spec, register_format
from rankwise.layers.shapes import ConvSpec, LinearSpec

# Importing each format module registers it in FORMATS.
_FORMAT_MODULES = ("lowrank_linear", "tt_linear", "channel_conv", "spatial_conv", "tucker2_conv",
                   "cp_conv")
for _name in _FORMAT_MODULES:
    try:
        importlib.import_module(f"rankwise.layers.{_name}")
    except ModuleNotFoundError as _e:  # pragma: no cover - only while a format is being written
        if _e.name != f"rankwise.layers.{_name}":
            raise

__all__ = [
    "FORMATS",
    "ConvSpec",
    "FactorizedLayer",
    "LinearSpec",
    "layer_from_spec",
    "register_format",
]
