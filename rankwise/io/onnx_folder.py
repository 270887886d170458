"""The folder `rankwise export --format onnx` writes: `model.onnx` (+ `model.onnx.data` above
2 GiB of weights; see `export_onnx`) and `onnx.json`, which records where the copy came from.

`onnx.json`: `{"command": "export", "source", "input_shape": [C, H, W], "input_names",
"dtype": "float32", "dynamic": {"batch": 0}, "meta": {...the source's meta...}}`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from rankwise.errors import CheckpointError
from rankwise.io.atomic import atomic_write_json
from rankwise.io.onnx_file import OnnxModel, export_onnx

GRAPH = "model.onnx"
INFO = "onnx.json"
FILES = (GRAPH, INFO)


def write_onnx_folder(model: nn.Module, folder: Path, example: Any, source: str,
                      input_shape: tuple[int, ...], meta: dict[str, Any]) -> None:
    """Export `model` traced on `example` into `folder` (which must exist; callers pass an
    `atomic_dir` temporary folder) with its `onnx.json`."""
    export_onnx(model, folder / GRAPH, example)
    names = list(example) if isinstance(example, dict) else ["input"]
    atomic_write_json(folder / INFO, {"command": "export", "source": str(source),
                                      "input_shape": list(input_shape), "input_names": names,
                                      "dtype": "float32", "dynamic": {"batch": 0},
                                      "meta": meta})


def is_onnx_folder(path: str | Path) -> bool:
    """True if `path` holds an ONNX export (its graph and `onnx.json`)."""
    return all((Path(path) / name).is_file() for name in FILES)


def read_onnx_info(folder: str | Path) -> dict[str, Any]:
    """`folder/onnx.json` as a dict; `CheckpointError` in one line if unreadable."""
    path = Path(folder) / INFO
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be read ({e}); export the model again with "
                              "`rankwise export SOURCE OUT --format onnx`") from e
    if not isinstance(info, dict):
        raise CheckpointError(f"{path} holds no JSON object; export the model again with "
                              "`rankwise export SOURCE OUT --format onnx`")
    return info


def load_onnx_folder(folder: str | Path) -> tuple[OnnxModel, dict[str, Any]]:
    """(the graph in ONNX Runtime, the metadata it was exported with: the source's `meta` plus
    `input_shape`)."""
    info = read_onnx_info(folder)
    meta = info.get("meta") if isinstance(info.get("meta"), dict) else {}
    return OnnxModel(Path(folder) / GRAPH), {"input_shape": info.get("input_shape"), **meta}


__all__ = ["FILES", "GRAPH", "INFO", "is_onnx_folder", "load_onnx_folder", "read_onnx_info",
           "write_onnx_folder"]
