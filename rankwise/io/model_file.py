"""Save and load (factorized) models as `model.safetensors` + `model.json`; never unpickles.

Layout of a saved model directory `path/`:
- `model.safetensors`: the state dict (contiguous CPU tensors). Tensors that share storage are
  stored once; `model.json["aliases"]` maps each dropped key to the key that holds the data.
- `model.json`: `{"rankwise_format": 1, "rankwise_version", "arch", "arch_kwargs",
  "input_shape", "factorized": {module name: FactorizedLayer.spec()}, "aliases",
  "safetensors_sha256", "meta"}`.

`load` rebuilds the base model (`create_model(arch, **arch_kwargs)`, or the `model=` you pass for
architectures not in the zoo), swaps in each listed factorized layer (`layer_from_spec`), then
loads the tensors strictly. Every failure is a `CheckpointError` naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankwise.errors import CheckpointError, RankwiseError
from rankwise.io.atomic import atomic_write
from rankwise.layers.base import (
    FactorizedLayer,
    dense_spec_from_dict,
    dense_spec_of,
    layer_from_spec,
)

WEIGHTS = "model.safetensors"
CONFIG = "model.json"
FORMAT_VERSION = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _version() -> str:
    import rankwise

    v = getattr(rankwise, "__version__", None)  # absent if rankwise resolves as a namespace pkg
    if v is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("rankwise")
        except PackageNotFoundError:
            v = "unknown"
    return str(v)


def factorized_specs(model: nn.Module) -> dict[str, dict[str, Any]]:
    """`{module name: spec()}` of the outermost factorized layers of `model`."""
    specs: dict[str, dict[str, Any]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, FactorizedLayer) and not any(name.startswith(p + ".") for p in specs):
            specs[name] = mod.spec()
    return specs


def _dedup(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop keys whose tensor is the same view of the same storage as an earlier key."""
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for k, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"state_dict entry {k!r} is a {type(t).__name__}, not a tensor; "
                                  "safetensors stores tensors only")
        ident = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
                 tuple(t.stride()), t.dtype)
        if t.numel() and ident in seen:
            aliases[k] = seen[ident]
            continue
        seen[ident] = k
        out[k] = t.detach().to("cpu").contiguous().clone()
    return out, aliases


def save(model: nn.Module, path: str | os.PathLike[str], arch: str | None = None,
         arch_kwargs: dict[str, Any] | None = None, input_shape: Sequence[int] | None = None,
         meta: dict[str, Any] | None = None, base: str | None = None) -> Path:
    """Write `path/model.safetensors` and `path/model.json`; returns the directory.

    `arch`/`arch_kwargs`: the `create_model` name and keyword arguments that rebuild the dense
    base (`base=` is an alias of `arch`); without them, `load` needs `model=`. `input_shape`
    (no batch dim) is kept for `rankwise load` / `profile`; `meta` must be JSON-serialisable.
    """
    from safetensors.torch import save

    arch = arch or base
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _dedup(model.state_dict())
    weights = out / WEIGHTS
    atomic_write(weights, save(tensors))
    config = {
        "rankwise_format": FORMAT_VERSION,
        "rankwise_version": _version(),
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "input_shape": None if input_shape is None else [int(s) for s in input_shape],
        "factorized": factorized_specs(model),
        "aliases": aliases,
        "safetensors_sha256": _sha256(weights),
        "meta": dict(meta or {}),
    }
    try:
        text = json.dumps(config, indent=2, sort_keys=True)
    except TypeError as e:
        raise CheckpointError(f"{out / CONFIG}: meta/arch_kwargs are not JSON-serialisable ({e}); "
                              "pass plain numbers, strings, lists and dicts") from e
    atomic_write(out / CONFIG, text.encode())
    return out


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed and checked `model.json` of a saved model directory."""
    file = Path(path) / CONFIG
    if not file.is_file():
        raise CheckpointError(f"{file} not found; `path` must be a directory written by "
                              "rankwise.save (model.json + model.safetensors)")
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({e}); the file is corrupt or "
                              "truncated: save the model again") from e
    if not isinstance(config, dict) or config.get("rankwise_format") != FORMAT_VERSION:
        raise CheckpointError(f"{file} is not a rankwise model config (expected "
                              f"rankwise_format={FORMAT_VERSION}); save the model again")
    for key, typ in (("factorized", dict), ("aliases", dict), ("arch_kwargs", dict)):
        if not isinstance(config.get(key, {}), typ):
            raise CheckpointError(f"{file}: field {key!r} must be a JSON object; the file is "
                                  "corrupt")
    return config


def _load_tensors(file: Path, expected_sha: str | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    if not file.is_file():
        raise CheckpointError(f"{file} not found; the saved model is incomplete: save it again")
    if expected_sha is not None and _sha256(file) != expected_sha:
        raise CheckpointError(f"{file}: checksum does not match model.json; the file is corrupt "
                              "or truncated, or belongs to another save: save the model again")
    try:
        return load(file.read_bytes())
    except Exception as e:  # safetensors raises SafetensorError / ValueError / others
        raise CheckpointError(f"{file} is not a valid safetensors file ({e}); it is corrupt or "
                              "truncated: save the model again") from e


def _swap_in(model: nn.Module, name: str, spec: Any, file: Path) -> None:
    if not isinstance(spec, dict):
        raise CheckpointError(f"{file}: spec of {name!r} is not a JSON object; the file is corrupt")
    try:
        old = model.get_submodule(name)
    except AttributeError as e:
        raise CheckpointError(f"{file} lists factorized layer {name!r}, but the base model has no "
                              "such module: the architecture does not match the saved model "
                              "(check arch/arch_kwargs or the model= you passed)") from e
    try:
        new = layer_from_spec(spec)
        saved_dense = dense_spec_from_dict(spec["dense"])
    except RankwiseError as e:
        raise CheckpointError(f"{file}, layer {name!r}: {e}") from e
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{file}, layer {name!r}: invalid spec ({e}); the file is corrupt "
                              "or from an incompatible rankwise version") from e
    if isinstance(old, (nn.Conv2d, nn.Linear)) and dense_spec_of(old) != saved_dense:
        raise CheckpointError(f"{file}: layer {name!r} was saved as a factorization of "
                              f"{saved_dense}, but the base model has {dense_spec_of(old)}: the "
                              "architecture does not match (check arch_kwargs, e.g. width)")
    new.train(old.training)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _check_keys(model: nn.Module, tensors: dict[str, torch.Tensor], aliases: dict[str, str],
                file: Path) -> dict[str, torch.Tensor]:
    for k, src in aliases.items():
        if src not in tensors:
            raise CheckpointError(f"{file}: alias {k!r} → {src!r} points at a missing tensor; "
                                  "the model.json does not belong to this file")
        tensors[k] = tensors[src]
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key {missing[0]!r}" + (f" (+{len(missing) - 1} more)"
                                                          if len(missing) > 1 else ""))
        if unexpected:
            parts.append(f"unexpected key {unexpected[0]!r}" + (f" (+{len(unexpected) - 1} more)"
                                                                if len(unexpected) > 1 else ""))
        raise CheckpointError(f"{file}: {', '.join(parts)}; the saved model does not match the "
                              "architecture (check arch/arch_kwargs or the model= you passed)")
    for k, t in expected.items():
        if tuple(tensors[k].shape) != tuple(t.shape):
            raise CheckpointError(f"{file}: tensor {k!r} has shape {tuple(tensors[k].shape)}, the "
                                  f"model expects {tuple(t.shape)}; the architecture does not "
                                  "match the saved model")
    return tensors


def load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu",
         model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model saved by `save`, on `map_location`, in eval mode.

    `model`: the dense base to build on (modified in place) for architectures that are not in
    `rankwise.models`; by default `create_model(arch, **arch_kwargs)` from `model.json`.
    """
    root = Path(path)
    config = read_config(root)
    file = root / WEIGHTS
    tensors = _load_tensors(file, config.get("safetensors_sha256"))
    if model is None:
        arch = config.get("arch")
        if not arch:
            raise CheckpointError(f"{root / CONFIG} has no 'arch' (the model was not built by "
                                  "rankwise.models); pass the dense base: load(path, model=...)")
        from rankwise.models import create_model

        try:
            model = create_model(arch, **config.get("arch_kwargs", {}))
        except RankwiseError as e:
            raise CheckpointError(f"{root / CONFIG}: cannot build arch {arch!r}: {e}") from e
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{root / CONFIG}: cannot build arch {arch!r} with "
                                  f"{config.get('arch_kwargs')} ({e}); the file is corrupt or "
                                  "from another rankwise version") from e
    for name, spec in config["factorized"].items():
        _swap_in(model, name, spec, root / CONFIG)
    tensors = _check_keys(model, tensors, config.get("aliases", {}), file)
    model.load_state_dict(tensors, strict=True)
    return model.to(map_location).eval()


def saved_input_shape(path: str | os.PathLike[str]) -> tuple[int, ...] | None:
    """The `input_shape` stored by `save`, falling back to the architecture's default."""
    config = read_config(path)
    if config.get("input_shape"):
        return tuple(int(s) for s in config["input_shape"])
    if config.get("arch"):
        from rankwise.models import default_input_shape

        try:
            return tuple(default_input_shape(config["arch"]))
        except (KeyError, ValueError, RankwiseError):
            return None
    return None
