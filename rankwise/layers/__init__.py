"""Factorized replacements for dense layers, one class per format (each registers itself in
`FORMATS` with `@register_format` when its module is imported below)."""

from rankwise.layers.base import FORMATS, FactorizedLayer, layer_from_spec, register_format
from rankwise.layers.channel_conv import ChannelLowRankConv2d
from rankwise.layers.cp_conv import CPConv2d
from rankwise.layers.decoupled_conv import DecoupledConv2d
from rankwise.layers.lowrank_linear import LowRankLinear
from rankwise.layers.shapes import ConvSpec, LinearSpec
from rankwise.layers.spatial_conv import SpatialLowRankConv2d
from rankwise.layers.tt_linear import TTLinear
from rankwise.layers.tucker2_conv import Tucker2Conv2d

__all__ = [
    "FORMATS",
    "CPConv2d",
    "ChannelLowRankConv2d",
    "ConvSpec",
    "DecoupledConv2d",
    "FactorizedLayer",
    "LinearSpec",
    "LowRankLinear",
    "SpatialLowRankConv2d",
    "TTLinear",
    "Tucker2Conv2d",
    "layer_from_spec",
    "register_format",
]
