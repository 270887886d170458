"""rankwise: low-rank training and compression of neural networks in PyTorch.

The user-facing verbs are re-exported lazily (importing `rankwise` stays cheap):
`decompose`, `to_dense`/`reconstruct`, `DecomposeReport` (surgery); `save`, `load` (io);
`profile_model`, `ModelProfile` (profile); the rank policies and `parse_rank` (rank).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "decompose": "rankwise.surgery",
    "to_dense": "rankwise.surgery",
    "reconstruct": "rankwise.surgery",
    "DecomposeReport": "rankwise.surgery",
    "save": "rankwise.io",
    "load": "rankwise.io",
    "profile_model": "rankwise.profile",
    "ModelProfile": "rankwise.profile",
    "Fixed": "rankwise.rank",
    "Ratio": "rankwise.rank",
    "Energy": "rankwise.rank",
    "ValueThreshold": "rankwise.rank",
    "EffectiveRank": "rankwise.rank",
    "StableRank": "rankwise.rank",
    "VBMF": "rankwise.rank",
    "ParamsBudget": "rankwise.rank",
    "MacsBudget": "rankwise.rank",
    "parse_rank": "rankwise.rank",
    "create_model": "rankwise.models",
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
