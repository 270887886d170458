"""The reloadable output directory of the compression pipeline.

`save_compressed(result, out, ...)` writes `model.json` (`rankwise.io`'s architecture spec;
`meta.compressed` names the weights file as `artifact` and holds its `artifact_sha256`) plus one
of `model.rwq` (entropy-coded blob, `compress.entropy` format), `model.int8.safetensors` (int8
state, uncoded) or `model.safetensors` (float, a plain `rankwise.io` directory). The artifact is
written first and `model.json` last (each atomically), so `model.json` only ever names a complete
file, and its checksum exposes any later damage.

`load_compressed(dir)` verifies the checksum, checks every tensor shape the architecture declares
against the artifact's header on the meta device (nothing allocated before the check), then
rebuilds the exact final model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rankwise.compress.entropy import decode_state, read_header
from rankwise.compress.quantize import QuantizedState, dequantize
from rankwise.errors import CheckpointError

if TYPE_CHECKING:
    from rankwise.compress.pipeline import PipelineResult

BLOB_FILE = "model.rwq"
INT8_FILE = "model.int8.safetensors"
FP32_FILE = "model.safetensors"
ARTIFACTS = (BLOB_FILE, INT8_FILE, FP32_FILE)


def int8_bytes(state: QuantizedState) -> bytes:
    """`state` as a safetensors file: keys `qweight/NAME`, `scale/NAME`, `other/NAME`."""
    from safetensors.torch import save

    tensors = {f"{g}/{k}": t.detach().cpu().contiguous()
               for g in ("qweight", "scale", "other") for k, t in getattr(state, g).items()}
    meta = {"format": "rankwise-int8-state", "weight_dtype": json.dumps(state.weight_dtype)}
    return save(tensors, metadata=meta)


def _load_int8(data: bytes, file: Path) -> QuantizedState:
    from safetensors.torch import load

    state = QuantizedState()
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        meta = header.get("__metadata__") or {}
        if meta.get("format") != "rankwise-int8-state":
            raise ValueError("not a rankwise int8 state")
        state.weight_dtype = dict(json.loads(meta.get("weight_dtype", "{}")))
        for key, t in load(data).items():
            group, _, name = key.partition("/")
            if group not in ("qweight", "scale", "other"):
                raise ValueError(f"unknown group in key {key!r}")
            getattr(state, group)[name] = t
    except Exception as e:  # safetensors raises SafetensorError, ValueError, ...
        raise CheckpointError(f"{file}: cannot read the int8 state ({e}); the file is corrupt "
                              "or truncated: run rankwise compress again") from e
    return state


def save_compressed(result: PipelineResult, path: str | os.PathLike[str],
                    arch: str | None = None, arch_kwargs: dict[str, Any] | None = None,
                    input_shape: Sequence[int] | None = None,
                    meta: dict[str, Any] | None = None) -> Path:
    """Write the final stage as a directory `load_compressed` (and, for float results,
    `rankwise.io.load`) can rebuild; returns the directory. Writes nothing else (reports are
    the caller's); artifacts of an earlier save into the same folder are removed."""
    from rankwise.io.atomic import atomic_write
    from rankwise.io.model_file import model_config, save, write_config

    out = Path(path)
    artifact = BLOB_FILE if result.blob is not None else (
        INT8_FILE if result.state is not None else FP32_FILE)
    info: dict[str, Any] = {"artifact": artifact, "stages": [r.stage for r in result.rows],
                            "config": result.to_dict()["config"]}
    if artifact == FP32_FILE:
        save(result.model, out, arch=arch, arch_kwargs=arch_kwargs, input_shape=input_shape,
             meta={**(meta or {}), "compressed": info})
    else:
        payload = result.blob if result.blob is not None else int8_bytes(result.state)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / artifact, payload)
        info["artifact_sha256"] = hashlib.sha256(payload).hexdigest()
        # No float weights are stored: the checksum lives in meta.compressed.
        write_config(out, model_config(result.model, arch, arch_kwargs, input_shape,
                                       {**(meta or {}), "compressed": info}, None))
    for stale in ARTIFACTS:
        if stale != artifact:
            (out / stale).unlink(missing_ok=True)
    return out


def compressed_artifact(path: str | os.PathLike[str]) -> str | None:
    """The weights file named by `path/model.json` (`meta.compressed.artifact`) when it is an
    int8/entropy-coded artifact, else None (a plain `rankwise.io` directory or no model.json)."""
    file = Path(path) / "model.json"
    if not file.is_file():
        return None
    try:
        config = json.loads(file.read_text())
        artifact = config.get("meta", {}).get("compressed", {}).get("artifact")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    return artifact if artifact in (BLOB_FILE, INT8_FILE) else None


def is_compressed_dir(path: str | os.PathLike[str]) -> bool:
    """True if `path` holds an int8 or entropy-coded model written by `save_compressed`."""
    return compressed_artifact(path) is not None


def build_architecture(config: dict[str, Any], root: Path,
                       model: nn.Module | None = None) -> nn.Module:
    """The architecture described by a `model.json` (`create_model(arch, **arch_kwargs)` or
    `model`, with each listed factorized layer swapped in), freshly initialised."""
    from rankwise.io.model_file import build_model

    return build_model(config, root, model)


def _artifact_shapes(data: bytes, artifact: str, file: Path) -> dict[str, tuple[int, ...]]:
    """`{state-dict key: shape}` of the weights and other tensors an artifact declares."""
    if artifact == BLOB_FILE:
        try:
            header = read_header(data)
            return {e["name"]: tuple(int(s) for s in e["shape"]) for e in header["entries"]
                    if e["group"] in ("qweight", "other")}
        except CheckpointError as e:
            raise CheckpointError(f"{file}: {e}") from e
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{file}: invalid header entry ({e}); the file is corrupt: "
                                  "run rankwise compress again") from e
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        shapes = {}
        for key, v in header.items():
            group, _, name = key.partition("/")
            if group in ("qweight", "other"):
                shapes[name] = tuple(int(s) for s in v["shape"])
        return shapes
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: cannot read the int8 header ({e}); the file is corrupt "
                              "or truncated: run rankwise compress again") from e


def load_compressed(path: str | os.PathLike[str], map_location: str | torch.device = "cpu",
                    model: nn.Module | None = None) -> nn.Module:
    """Rebuild the final model of a `save_compressed` directory, in eval mode.

    Entropy-coded blob → `decode_state` → dequantize into the architecture rebuilt from
    `model.json`; an int8 safetensors state likewise; a float directory via `rankwise.io.load`.
    The result equals the pipeline's `result.model` bit for bit. `model`: the dense base for
    architectures outside `rankwise.models` (modified in place). Raises `CheckpointError` if the
    artifact's sha256 differs from `model.json`'s or its shapes do not fit the architecture.
    """
    from rankwise import io
    from rankwise.io.headers import check_shapes
    from rankwise.io.model_file import build_model, declared_shapes

    root = Path(path)
    artifact = compressed_artifact(root)
    if artifact is None:
        return io.load(root, map_location=map_location, model=model)
    config = io.read_config(root)
    file = root / artifact
    if not file.is_file():
        raise CheckpointError(f"{file} not found; the compressed model is incomplete: run "
                              "rankwise compress again")
    data = file.read_bytes()
    expected_sha = ((config.get("meta") or {}).get("compressed") or {}).get("artifact_sha256")
    if expected_sha is not None and hashlib.sha256(data).hexdigest() != expected_sha:
        raise CheckpointError(f"{file}: checksum does not match model.json; the file is corrupt, "
                              "truncated or from another run: run rankwise compress again")
    expected = declared_shapes(config, root, model)
    if expected is not None:
        check_shapes(expected, _artifact_shapes(data, artifact, file), file)
    try:
        state = decode_state(data) if artifact == BLOB_FILE else _load_int8(data, file)
    except CheckpointError as e:
        raise CheckpointError(f"{file}: {e}") from e
    base = build_model(config, root, model)
    try:
        loaded = dequantize(state, base)
    except CheckpointError as e:
        raise CheckpointError(f"{file}: {e}") from e
    return loaded.to(map_location).eval()
