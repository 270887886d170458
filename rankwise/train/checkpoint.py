"""Training checkpoints: atomic write (temp file + fsync + os.replace), `weights_only` load,
and the RNG states (torch CPU/CUDA, numpy, Python `random`) stored as tensors and plain types."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rankwise.errors import CheckpointError
from rankwise.io.atomic import atomic_write

CHECKPOINT = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    """Every global RNG state, as tensors and plain types (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "state": [int(x) for x in py_state],
                   "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (CUDA states only if the device count matches)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write `state` to `path` atomically: a crash leaves either the old or the new file."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` on CPU, without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found; cannot resume: train without --resume, or "
                              "point --out at the run directory that holds checkpoint.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors of a truncated or foreign file
        raise CheckpointError(f"{path} cannot be loaded ({type(e).__name__}: {e}); the file is "
                              "corrupt or not a rankwise checkpoint: delete it and retrain") from e
    missing = [k for k in ("model", "optimizer", "epoch", "global_step") if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}; not a rankwise training checkpoint")
    return state
