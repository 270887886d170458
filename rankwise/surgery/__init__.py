"""Model surgery: `decompose()` rewrites layers (how), rank policies and budgets decide how much.

`decompose.py` walks the model and swaps layers; `candidates.py` says which layers may be
factorized and why others stay dense (HF `Conv1D` and `nn.MultiheadAttention` projections are
exposed as linears by `rankwise.layers.foreign`); `trace.py` runs the example inputs once (input
shapes, MACs); `allocate.py` turns a rank policy into per-layer ranks (one call point, global
budgets included); `apply.py` builds and swaps one layer; `rank.py` holds the per-layer
policies, `budget.py` the global params/MACs allocator, `report.py` what was done per layer;
`latency_*.py` the measured-latency budget (table, measurement, solver, policy).
"""

from rankwise.surgery.decompose import DecomposeReport, decompose, reconstruct, to_dense
from rankwise.surgery.latency_budget import LatencyBudget, allocate_latency
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

__all__ = ["VBMF", "DecomposeReport", "EffectiveRank", "Energy", "Fixed", "LatencyBudget",
           "MacsBudget", "allocate_latency",
           "ParamsBudget", "Ratio", "StableRank", "ValueThreshold", "decompose", "parse_rank",
           "reconstruct", "to_dense"]
