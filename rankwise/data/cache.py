"""Cache of decoded splits as two plain `.npy` files (uint8 images, int64 labels).

Keyed by the source files' paths, sizes and mtimes and the verification mode, so a changed file
is decoded (and verified) again. Read back with `allow_pickle=False`. Cache failures (read-only
home, full disk) never fail a load: the split is just decoded again next time.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np


def cache_key(name: str, train: bool, files: list[Path], verify: str) -> str:
    """Hex digest naming the decoded split of `files`."""
    h = hashlib.sha256(f"{name}|{train}|{verify}|v1".encode())
    for path in files:
        st = path.stat()
        h.update(f"|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _paths(cache_dir: Path, name: str, train: bool, key: str) -> tuple[Path, Path]:
    stem = f"{name}-{'train' if train else 'test'}-{key}"
    return cache_dir / f"{stem}-images.npy", cache_dir / f"{stem}-labels.npy"


def load_cached(cache_dir: Path, name: str, train: bool, key: str
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """(images, labels) from the cache, or None if absent or unreadable."""
    img_path, lab_path = _paths(cache_dir, name, train, key)
    if not (img_path.is_file() and lab_path.is_file()):
        return None
    try:
        images = np.load(img_path, allow_pickle=False)
        labels = np.load(lab_path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if images.dtype != np.uint8 or labels.dtype != np.int64 or images.ndim != 4 \
            or labels.shape != (images.shape[0],):
        return None
    return images, labels


def _save_atomic(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def store_cached(cache_dir: Path, name: str, train: bool, key: str,
                 images: np.ndarray, labels: np.ndarray) -> bool:
    """Write the decoded split; False (and nothing left behind) if the cache is not writable."""
    img_path, lab_path = _paths(cache_dir, name, train, key)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _save_atomic(lab_path, labels)
        _save_atomic(img_path, images)
    except OSError:
        return False
    return True
