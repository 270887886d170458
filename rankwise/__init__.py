"""rankwise: low-rank training and compression of neural networks in PyTorch.

The user-facing verbs are re-exported lazily (importing `rankwise` stays cheap):
`decompose`, `to_dense`/`reconstruct`, `DecomposeReport` (surgery); `save`, `load`,
`export_onnx`, `OnnxModel` (io);
`profile_model`, `ModelProfile` (profile); the rank policies and `parse_rank` (rank); the
loop-agnostic methods `TRP`, `ELRT`, `SFW` (+ `build_sfw`, `sfw_finalize`, `sfw_sweep`),
`EffectiveRankRegularizer`, `NuclearRegularizer`, `SubspaceTraining` and their configs.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "decompose": "rankwise.surgery.decompose",
    "to_dense": "rankwise.surgery.decompose",
    "reconstruct": "rankwise.surgery.decompose",
    "DecomposeReport": "rankwise.surgery.decompose",
    "save": "rankwise.io.model_file",
    "load": "rankwise.io.model_file",
    "export_onnx": "rankwise.io.onnx_file",
    "OnnxModel": "rankwise.io.onnx_file",
    "profile_model": "rankwise.analysis.profile",
    "ModelProfile": "rankwise.analysis.profile_result",
    "Fixed": "rankwise.surgery.rank",
    "Ratio": "rankwise.surgery.rank",
    "Energy": "rankwise.surgery.rank",
    "ValueThreshold": "rankwise.surgery.rank",
    "EffectiveRank": "rankwise.surgery.rank",
    "StableRank": "rankwise.surgery.rank",
    "VBMF": "rankwise.surgery.rank",
    "ParamsBudget": "rankwise.surgery.rank",
    "MacsBudget": "rankwise.surgery.rank",
    "LatencyBudget": "rankwise.surgery.latency_budget",
    "parse_rank": "rankwise.surgery.rank",
    "create_model": "rankwise.models",
    "run": "rankwise.train.run",
    "RunConfig": "rankwise.train.run",
    # loop-agnostic methods (rankwise.methods); adapters live in rankwise.integrations
    "TRP": "rankwise.methods",
    "TRPConfig": "rankwise.methods",
    "ELRT": "rankwise.methods",
    "ELRTConfig": "rankwise.methods",
    "SFW": "rankwise.methods",
    "SFWConfig": "rankwise.methods",
    "build_sfw": "rankwise.methods",
    "sfw_finalize": "rankwise.methods",
    "sfw_sweep": "rankwise.methods",
    "EffectiveRankRegularizer": "rankwise.methods",
    "NuclearRegularizer": "rankwise.methods",
    "SubspaceTraining": "rankwise.methods",
    "CompressionMethod": "rankwise.methods",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rankwise' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
