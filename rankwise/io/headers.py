"""What a weights file declares, read without loading it: the `{key: shape}` of a safetensors
header, and the check of those shapes against the ones an architecture expects. `rankwise.io.load`
and `compress.load_compressed` run the check on a meta-device build of the architecture before
allocating anything, so an edited `model.json` cannot make them allocate more than the file holds.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from rankwise.errors import CheckpointError

MAX_HEADER = 1 << 27  # bytes of a safetensors JSON header we are willing to read


def safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """`{key: shape}` from the JSON header of a safetensors file, without reading the tensors."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8 or n > MAX_HEADER:
                raise ValueError(f"header length {n} exceeds the file size {size}")
            header = json.loads(f.read(n))
        return {k: tuple(int(d) for d in v["shape"]) for k, v in header.items()
                if k != "__metadata__"}
    except FileNotFoundError as e:
        raise CheckpointError(f"{file} not found; the saved model is incomplete: save it "
                              "again") from e
    except (struct.error, ValueError, KeyError, TypeError, AttributeError,
            UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not a valid safetensors file ({e}); it is corrupt or "
                              "truncated: save the model again") from e


def _more(n: int) -> str:
    return f" (+{n} more)" if n else ""


def state_mismatch(expected: dict[str, tuple[int, ...]],
                   found: dict[str, tuple[int, ...]]) -> str:
    """'' if `found` holds exactly the keys and shapes of `expected`; else the first missing key,
    the first unexpected key and the first shape mismatch, each with how many more there are."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    shape = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    parts = []
    if missing:
        parts.append(f"missing key {missing[0]!r}{_more(len(missing) - 1)}")
    if extra:
        parts.append(f"unexpected key {extra[0]!r}{_more(len(extra) - 1)}")
    if shape:
        k = shape[0]
        parts.append(f"tensor {k!r} has shape {tuple(found[k])} in the file, the model expects "
                     f"{tuple(expected[k])}{_more(len(shape) - 1)}")
    return "; ".join(parts)


def check_shapes(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]],
                 file: Path) -> None:
    """`CheckpointError` naming the first missing/unexpected key and shape mismatch between the
    architecture's state dict (`expected`) and what `file` holds (`found`)."""
    problem = state_mismatch(expected, found)
    if problem:
        raise CheckpointError(f"{file}: {problem}; the saved model does not match the "
                              "architecture (model.json was edited or belongs to another save, "
                              "or the model= you passed differs)")
