"""Training checkpoints: atomic write (temp file + fsync + os.replace), `weights_only` load,
a SHA-256 digest of the content checked on load, and the RNG states (torch CPU/CUDA, numpy,
Python `random`) stored as tensors and plain types."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rankwise.errors import CheckpointError
from rankwise.io.atomic import atomic_write

CHECKPOINT = "checkpoint.pt"
DIGEST_KEY = "sha256"


def content_digest(state: Any) -> str:
    """SHA-256 over every tensor (dtype, shape, bytes) and plain value of `state`, in order.

    Computed on the loaded objects, so it is independent of the zip/pickle container: a flipped
    byte in any tensor or number of the checkpoint changes it.
    """
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(x.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(f"D{len(x)}".encode())
            for k, v in x.items():
                walk(k)
                walk(v)
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)}".encode())
            for v in x:
                walk(v)
        else:
            h.update(f"{type(x).__name__}:{x!r};".encode())

    walk(state)
    return h.hexdigest()


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


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python `random` (a fresh run's starting RNG state)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


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
    """Write `state` (+ its `content_digest`) to `path` atomically: a crash leaves either the
    old or the new file."""
    state = {k: v for k, v in state.items() if k != DIGEST_KEY}
    state[DIGEST_KEY] = content_digest(state)
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
    stored = state.pop(DIGEST_KEY, None)
    if stored is not None and stored != content_digest(state):
        raise CheckpointError(f"{path} fails its integrity check (content digest mismatch): the "
                              "file was modified or damaged after it was written; restore it "
                              "from a copy or retrain without --resume")
    return state


def trainer_state(trainer: Any) -> dict[str, Any]:
    """Everything `Trainer.fit(resume=True)` needs, as tensors and plain types; includes the
    logged epoch rows, so `metrics.jsonl` can be repaired to match the checkpoint."""
    loader_state = {"seed": trainer.cfg.seed, "epoch": trainer.epoch}
    if hasattr(trainer.loader, "state_dict"):
        loader_state["state"] = trainer.loader.state_dict()
    return {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict() if trainer.scheduler else {},
            "hooks": [h.state_dict() for h in trainer.hooks], "epoch": trainer.epoch,
            "global_step": trainer.global_step, "rng": rng_state(), "loader": loader_state,
            "config": trainer.cfg.to_dict(), "epoch_rows": list(trainer.epoch_rows)}


def restore_trainer(trainer: Any, state: dict[str, Any], path: Path) -> None:
    """Load `state` (from `load_checkpoint(path)`) into `trainer`; CheckpointError on a
    mismatch of hooks or architecture."""
    from rankwise.train.runspec import BOOKKEEPING, diff_settings

    if isinstance(state.get("config"), dict):  # old runs: same settings must still validate
        if hasattr(trainer.cfg, "keep_run_precision"):
            trainer.cfg.keep_run_precision(state["config"])
        bad = diff_settings("train", state["config"], trainer.cfg.to_dict(),
                    type(trainer.cfg)().to_dict(), BOOKKEEPING)
        if bad:
            raise CheckpointError(f"{path} was trained with other settings: " + "; ".join(bad)
                                  + "; resume with the run's settings or start a new run")
    if len(state.get("hooks", [])) != len(trainer.hooks):
        raise CheckpointError(f"{path} holds state of {len(state['hooks'])} hooks, this run "
                              f"has {len(trainer.hooks)}: resume with the same --method/flags")
    try:
        trainer.model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: model weights do not match this architecture ({e}); "
                              "resume with the same --model/--width/--method") from e
    trainer.optimizer.load_state_dict(state["optimizer"])
    if state.get("scheduler") and trainer.scheduler is not None:
        trainer.scheduler.load_state_dict(state["scheduler"])
    for hook, hook_state in zip(trainer.hooks, state.get("hooks", []), strict=True):
        hook.load_state_dict(hook_state)
    trainer.epoch, trainer.global_step = int(state["epoch"]), int(state["global_step"])
    trainer.epoch_rows = list(state.get("epoch_rows") or [])
    loader_state = state.get("loader", {})
    if "state" in loader_state and hasattr(trainer.loader, "load_state_dict"):
        trainer.loader.load_state_dict(loader_state["state"])
    if "rng" in state:
        set_rng_state(state["rng"])
