"""`--init`: start a run from the weights of a trained model of the same architecture.

The TRP paper's ImageNet recipe (Xu et al. 2020, §4.2) applies TRP while fine-tuning a
pre-trained network rather than from scratch; SFW and plain fine-tuning start the same way.
The source is a directory written by `rankwise.save` (e.g. a `rankwise train` run directory,
which holds `model.json` + `model.safetensors`) or a `.safetensors` state dict. Nothing pickled
is read. The weights must match the zoo model exactly (names and shapes): a factorized model
cannot seed a dense run.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from rankwise.errors import CheckpointError
from rankwise.io.state_file import load_state_file


def init_source(path: str | os.PathLike[str]) -> Path:
    """The weights file `--init PATH` names: PATH/model.safetensors of a saved-model directory,
    or PATH itself if it is a `.safetensors` file; `CheckpointError` otherwise."""
    p = Path(path)
    if p.is_dir() and (p / "model.json").is_file() and (p / "model.safetensors").is_file():
        return p / "model.safetensors"
    if p.is_file() and p.suffix == ".safetensors":
        return p
    raise CheckpointError(f"--init {p}: expected a directory written by rankwise.save or "
                          "`rankwise train` (model.json + model.safetensors) or a .safetensors "
                          "state dict; pickled .pt files are not read")


def load_init_weights(model: nn.Module, path: str | os.PathLike[str],
                      sha256: str | None = None) -> Path:
    """Copy the weights named by `--init path` into `model` (every parameter and buffer, strict);
    returns the file read. A corrupt file or a missing, extra or differently shaped tensor raises
    `CheckpointError` naming the first few; so does a file whose sha256 is no longer `sha256`
    (the digest the run recorded when it started)."""
    file = init_source(path)
    load_state_file(model, file, "pass a trained model of the same zoo architecture, width and "
                    "number of classes (dense, not factorized)", sha256,
                    "--init changed after the run started: start the run again")
    return file


__all__ = ["init_source", "load_init_weights"]
