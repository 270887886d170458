"""Reader of the CIFAR-10/100 "python version" batches through a restricted unpickler.

Each batch is a protocol-2 pickle of a dict with `batch_label`, `labels` (CIFAR-10) or
`fine_labels` (CIFAR-100), `data` (uint8 (N, 3072): 1024 R, 1024 G, 1024 B, row-major 32x32) and
`filenames`. The unpickler admits only the three globals such a file references, so a crafted
file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from rankwise.errors import DatasetIntegrityError


def _reconstruct() -> Any:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array reconstruction globals.

    Anything else (os.system, builtins.eval, codecs.encode, ...) raises DatasetIntegrityError
    naming the file, before the global is even imported.
    """

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise DatasetIntegrityError(
                f"{self.path}: pickle references {module}.{name}, which a CIFAR batch never does; "
                f"refusing to load it (the file is not an official CIFAR batch; replace it)")
        if name == "_reconstruct":
            return _reconstruct()
        return np.ndarray if name == "ndarray" else np.dtype

    def persistent_load(self, pid: Any) -> Any:
        raise DatasetIntegrityError(f"{self.path}: pickle uses persistent ids; refusing to load")


def load_pickle(path: Path) -> Any:
    """Unpickle `path` with `RestrictedUnpickler`; DatasetIntegrityError on any failure."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, path).load()
    except DatasetIntegrityError:
        raise
    except Exception as e:  # truncated or garbage pickles raise many different types
        raise DatasetIntegrityError(
            f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e}); the file is "
            f"truncated or corrupt. Delete it and re-download (download=True)") from e


def read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of one batch file, structure-checked."""
    batch = load_pickle(path)
    if not isinstance(batch, dict):
        raise DatasetIntegrityError(f"{path}: expected a dict, got {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    missing = [k for k in ("data", label_key) if k not in batch]
    if missing:
        raise DatasetIntegrityError(
            f"{path}: keys {missing} missing (has {sorted(map(str, batch))}); wrong dataset "
            f"(CIFAR-10 batches have 'labels', CIFAR-100 'fine_labels')")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        desc = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise DatasetIntegrityError(f"{path}: 'data' must be uint8 (N, 3072), got {desc}")
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise DatasetIntegrityError(f"{path}: {label_key!r} is not a list of ints") from e
    if labels.shape != (data.shape[0],):
        raise DatasetIntegrityError(
            f"{path}: {labels.shape[0] if labels.ndim else 0} labels for {data.shape[0]} images")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DatasetIntegrityError(
            f"{path}: {label_key} outside [0, {num_classes}): min {int(labels.min())}, "
            f"max {int(labels.max())}")
    return data.reshape(-1, 3, 32, 32), labels
