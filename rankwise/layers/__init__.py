"""Factorized replacements for dense layers, one class per format."""

from rankwise.layers.base import FORMATS, FactorizedLayer, layer_from_spec, register_format
from rankwise.layers.shapes import ConvSpec, LinearSpec

__all__ = [
    "FORMATS",
    "ConvSpec",
    "FactorizedLayer",
    "LinearSpec",
    "layer_from_spec",
    "register_format",
]
