"""Compression-aware and pre-set training methods as loop-agnostic objects.

Each method is a `CompressionMethod` (life cycle in `rankwise.methods.base`) registered by
`@register_method` in `METHOD_CLASSES`, with its options declared once as a dataclass
(`rankwise.options`). The glue to rankwise's own `Trainer` (`--method NAME`) is in
`rankwise.train.recipes`; adapters for Lightning / Hugging Face in `rankwise.integrations`.
"""

from __future__ import annotations

from rankwise.methods.base import CompressionMethod, DenseConfig
from rankwise.methods.elrt import ELRT, ELRTConfig
from rankwise.methods.erank_reg import EffectiveRankRegularizer, ERankRegConfig
from rankwise.methods.nuclear import NuclearPenaltyConfig, NuclearRegularizer
from rankwise.methods.registry import METHOD_CLASSES, method_class, register_method
from rankwise.methods.sfw import (
    SFW,
    SFWConfig,
    build_sfw,
    sfw_finalize,
    sfw_sweep,
)
from rankwise.methods.subspace import SubspaceConfig, SubspaceTraining
from rankwise.methods.trp import TRP
from rankwise.methods.trp_config import TRPConfig

__all__ = ["ELRT", "METHOD_CLASSES", "SFW", "TRP", "CompressionMethod", "DenseConfig",
           "ELRTConfig", "ERankRegConfig", "EffectiveRankRegularizer", "NuclearPenaltyConfig",
           "NuclearRegularizer", "SFWConfig", "SubspaceConfig", "SubspaceTraining", "TRPConfig",
           "build_sfw", "method_class", "register_method", "sfw_finalize", "sfw_sweep"]
