"""Load a bare `.safetensors` state dict into a model that is already built.

`rankwise train --init FILE` and `rankwise decompose --model M --checkpoint FILE` both take a
state dict saved by someone else's loop. Nothing pickled is read; a corrupt file, a missing or
unexpected key and a shape mismatch each give one `CheckpointError` line naming the file, the
first offending keys and what to pass instead.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from torch import nn

from rankwise.errors import CheckpointError
from rankwise.io.headers import safetensors_shapes, state_mismatch


def load_state_file(model: nn.Module, file: Path, fix: str, sha256: str | None = None,
                    changed: str = "") -> None:
    """Copy every parameter and buffer of `model` from the safetensors `file` (strict: same
    names and shapes; values cast to the model's dtypes). `fix` ends the error line, e.g.
    'pass the --model the weights were trained with'. With `sha256`, the bytes read are the
    bytes checked: a file whose digest differs raises `CheckpointError` ending in `changed`."""
    from safetensors.torch import load, load_file

    own = model.state_dict()
    problem = state_mismatch({k: tuple(v.shape) for k, v in own.items()},
                             safetensors_shapes(file))
    if problem:
        raise CheckpointError(f"{file}: its weights do not fit the model ({problem}); {fix}")
    data = None
    if sha256 is not None:
        data = file.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise CheckpointError(f"{file} changed after its sha256 {sha256[:12]}… was recorded; "
                                  f"{changed or fix}")
    try:
        tensors = load_file(str(file), device="cpu") if data is None else load(data)
    except Exception as e:  # safetensors raises its own error type for a damaged body
        raise CheckpointError(f"{file} is not a valid safetensors file ({e}); it is corrupt or "
                              "truncated: save it again") from e
    model.load_state_dict({k: tensors[k].to(own[k].dtype) for k in own}, strict=True)


__all__ = ["load_state_file"]
