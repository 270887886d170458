"""Model surgery: `decompose()` rewrites layers (how), rank policies and budgets decide how much.

`decompose.py` walks the model and swaps layers, `rank.py` holds the per-layer policies,
`budget.py` the global params/MACs allocator, `report.py` what was done per layer.
"""

from rankwise.surgery.decompose import DecomposeReport, decompose, reconstruct, to_dense
from rankwise.surgery.rank import (
    VBMF,
    EffectiveRank,
    Energy,
    Fixed,
    MacsBudget,
    ParamsBudget,
    Ratio,
    StableRank,
    ValueThreshold,
    parse_rank,
)

__all__ = ["VBMF", "DecomposeReport", "EffectiveRank", "Energy", "Fixed", "MacsBudget",
           "ParamsBudget", "Ratio", "StableRank", "ValueThreshold", "decompose", "parse_rank",
           "reconstruct", "to_dense"]
