"""Save and load (factorized) models as `model.safetensors` + `model.json`; never unpickles.

Layout of a saved model directory `path/`:
- `model.safetensors`: the state dict (contiguous CPU tensors). Tensors that share storage are
  stored once; `model.json["aliases"]` maps each dropped key to the key that holds the data.
- `model.json`: `{"rankwise_format": 1, "rankwise_version", "arch", "arch_kwargs",
  "input_shape", "factorized": {module name: FactorizedLayer.spec()}, "aliases",
  "safetensors_sha256", "meta"}`.

`load` rebuilds the base model (`build_model(arch, **arch_kwargs)`, or the `model=` you pass for
architectures not in the zoo), swaps in each listed factorized layer (`layer_from_spec`), then
loads the tensors strictly. Before anything is allocated, the architecture is built on the meta
device and every state-dict shape it declares is checked against the safetensors header, so an
edited `model.json` cannot make `load` allocate more than the file holds. Every failure is a
`CheckpointError` naming the file and the fix.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankwise.errors import CheckpointError, RankwiseError
from rankwise.io.atomic import atomic_write, json_text
from rankwise.io.headers import check_shapes, safetensors_shapes
from rankwise.layers.base import (
    FactorizedLayer,
    dense_spec_from_dict,
    dense_spec_of,
    layer_from_spec,
)
from rankwise.layers.foreign import convert_for

WEIGHTS = "model.safetensors"
CONFIG = "model.json"
FORMAT_VERSION = 1
MAX_INPUT_NUMEL = 1 << 26  # elements of one saved input sample (256 MB as float32)


def file_sha256(path: Path) -> str:
    """sha256 (hex) of a file, read in 1 MiB blocks."""
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
    """Write `path/model.safetensors` then `path/model.json` (each atomically; the JSON holds
    the weights' sha256, so a crash between the two is detected by `load`); returns the folder.

    `arch`/`arch_kwargs`: the `create_model` name and keyword arguments that rebuild the dense
    base (`base=` is an alias of `arch`); without them, `load` needs `model=`. `input_shape`
    (no batch dim) is kept for `rankwise load` / `profile`; `meta` must be JSON-serialisable
    (NaN/Inf floats are written as null). A model with tensors on the meta device is refused.
    """
    from safetensors.torch import save

    out = Path(path)
    state = model.state_dict()
    on_meta = [k for k, t in state.items() if isinstance(t, torch.Tensor) and t.is_meta]
    if on_meta:
        raise CheckpointError(f"cannot save to {out}: tensor {on_meta[0]!r} (+{len(on_meta) - 1} "
                              "more) is on the meta device and holds no values; materialize the "
                              "model first (model.to_empty(device='cpu'), then initialize or "
                              "load its weights)")
    tensors, aliases = _dedup(state)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS, save(tensors))
    config = model_config(model, arch or base, arch_kwargs, input_shape, meta,
                          file_sha256(out / WEIGHTS), aliases)
    write_config(out, config)
    return out


def model_config(model: nn.Module, arch: str | None, arch_kwargs: dict[str, Any] | None,
                 input_shape: Sequence[int] | None, meta: dict[str, Any] | None,
                 weights_sha256: str | None, aliases: dict[str, str] | None = None
                 ) -> dict[str, Any]:
    """The `model.json` content describing `model` (see the module docstring). Without `arch`,
    the spec recorded by `rankwise.models.build_model` on the model is written, if any."""
    if arch is None:
        from rankwise.models.resolve import recorded_arch

        recorded = recorded_arch(model)
        if recorded is not None:
            arch, arch_kwargs = recorded[0], {**recorded[1], **(arch_kwargs or {})}
    return {
        "rankwise_format": FORMAT_VERSION,
        "rankwise_version": _version(),
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "input_shape": None if input_shape is None else [int(s) for s in input_shape],
        "factorized": factorized_specs(model),
        "aliases": dict(aliases or {}),
        "safetensors_sha256": weights_sha256,
        "meta": dict(meta or {}),
    }


def write_config(out: Path, config: dict[str, Any]) -> Path:
    """Write `out/model.json` atomically as strict JSON; `CheckpointError` if not serialisable."""
    try:
        text = json_text(config, sort_keys=True, default=None)
    except TypeError as e:
        raise CheckpointError(f"{out / CONFIG}: meta/arch_kwargs are not JSON-serialisable ({e}); "
                              "pass plain numbers, strings, lists and dicts") from e
    return atomic_write(out / CONFIG, text.encode())


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
    shape = config.get("input_shape")
    if shape is not None and not (
            isinstance(shape, list) and 1 <= len(shape) <= 4
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
            and math.prod(shape) <= MAX_INPUT_NUMEL):
        raise CheckpointError(f"{file}: input_shape {shape!r} is not 1 to 4 positive ints of at "
                              f"most {MAX_INPUT_NUMEL:,} elements in all; the file is corrupt "
                              "(pass --input-shape to override, or save the model again)")
    return config


def _load_tensors(file: Path, expected_sha: str | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    if not file.is_file():
        raise CheckpointError(f"{file} not found; the saved model is incomplete: save it again")
    if expected_sha is not None and file_sha256(file) != expected_sha:
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
    except (KeyError, TypeError, ValueError, OverflowError, RuntimeError) as e:
        raise CheckpointError(f"{file}, layer {name!r}: invalid spec ({e}); the file is corrupt "
                              "or from an incompatible rankwise version") from e
    if isinstance(old, (nn.Conv2d, nn.Linear)) and dense_spec_of(old) != saved_dense:
        raise CheckpointError(f"{file}: layer {name!r} was saved as a factorization of "
                              f"{saved_dense}, but the base model has {dense_spec_of(old)}: the "
                              "architecture does not match (check arch_kwargs, e.g. width)")
    new.train(old.training)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def build_model(config: dict[str, Any], root: Path, model: nn.Module | None = None) -> nn.Module:
    """The architecture of a `model.json` (`rankwise.models.build_model(arch, **arch_kwargs)`:
    zoo names, tv:/timm:/hf: specs, module:factory; or `model`
    modified in place), with each listed factorized layer swapped in, freshly initialized.
    Under `with torch.device("meta")` nothing is allocated."""
    if model is None:
        arch = config.get("arch")
        if not arch:
            raise CheckpointError(f"{root / CONFIG} has no 'arch' (the model was not built by "
                                  "rankwise.models); pass the dense base: load(path, model=...)")
        from rankwise.models.resolve import build_model as build_arch

        try:
            model = build_arch(arch, **config.get("arch_kwargs", {}))
        except RankwiseError as e:
            raise CheckpointError(f"{root / CONFIG}: cannot build arch {arch!r}: {e}") from e
        except (KeyError, TypeError, ValueError, OverflowError, RuntimeError) as e:
            raise CheckpointError(f"{root / CONFIG}: cannot build arch {arch!r} with "
                                  f"{config.get('arch_kwargs')} ({e}); the file is corrupt or "
                                  "from another rankwise version") from e
    convert_for(model, set(config["factorized"]))  # MHA projections, HF Conv1D as linears
    for name, spec in config["factorized"].items():
        _swap_in(model, name, spec, root / CONFIG)
    return model


def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` whose parameters and buffers live on the meta device."""
    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) \
            else empty
    return copy.deepcopy(model, memo)


def declared_shapes(config: dict[str, Any], root: Path,
                    model: nn.Module | None = None) -> dict[str, tuple[int, ...]] | None:
    """`{state-dict key: shape}` of the model `config` describes, built on the meta device
    (nothing allocated); None if some layer cannot be built on the meta device."""
    try:
        with torch.device("meta"):
            built = build_model(config, root, None if model is None else _meta_copy(model))
    except NotImplementedError:
        return None
    return {k: tuple(t.shape) for k, t in built.state_dict().items()}


def _resolve_aliases(found: dict[str, Any], aliases: dict[str, str], file: Path) -> dict:
    for k, src in aliases.items():
        if src not in found:
            raise CheckpointError(f"{file}: alias {k!r} → {src!r} points at a missing tensor; "
                                  "the model.json does not belong to this file")
        found[k] = found[src]
    return found


def load(path: str | os.PathLike[str], map_location: str | torch.device = "cpu",
         model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model saved by `save`, on `map_location`, in eval mode.

    `model`: the dense base to build on (modified in place) for architectures that are not in
    `rankwise.models`; by default `create_model(arch, **arch_kwargs)` from `model.json`. Shapes
    are checked against the safetensors header on the meta device before anything is allocated.
    """
    root = Path(path)
    config = read_config(root)
    file = root / WEIGHTS
    found = _resolve_aliases(safetensors_shapes(file), config.get("aliases", {}), file)
    expected = declared_shapes(config, root, model)
    if expected is not None:  # before anything is allocated
        check_shapes(expected, found, file)
    tensors = _load_tensors(file, config.get("safetensors_sha256"))
    model = build_model(config, root, model)
    tensors = _resolve_aliases(tensors, config.get("aliases", {}), file)
    if expected is None:
        check_shapes({k: tuple(t.shape) for k, t in model.state_dict().items()},
                     {k: tuple(t.shape) for k, t in tensors.items()}, file)
    model.load_state_dict(tensors, strict=True)
    return model.to(map_location).eval()


def saved_input_shape(path: str | os.PathLike[str]) -> tuple[int, ...] | None:
    """The `input_shape` stored by `save`, falling back to the architecture's default."""
    config = read_config(path)
    if config.get("input_shape"):
        return tuple(int(s) for s in config["input_shape"])
    if config.get("arch"):
        from rankwise.models.resolve import default_input_shape

        try:
            shape = default_input_shape(config["arch"])
            return None if shape is None else tuple(shape)
        except (KeyError, ValueError, RankwiseError):
            return None
    return None
