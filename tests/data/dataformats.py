"""Writers of tiny dataset files in the exact original formats (helpers for tests/data).

IDX: big-endian header + uint8 payload, gzipped like the official downloads. CIFAR: protocol-2
pickles as written by Python 2 (str = SHORT_BINSTRING/BINSTRING), which is what the official
batches contain; the ndarray goes through numpy's own `__reduce__`.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write uint8 `array` (N,) or (N, H, W) as an IDX file (`.gz` appended if `compress`)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol-2 pickler that writes bytes as Python 2 `str` opcodes (like cPickle did)."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray,
                      label_key: str = "labels", batch_label: str = "testing batch") -> Path:
    """Write a CIFAR batch: dict of batch_label, labels/fine_labels, data (N, 3072), filenames."""
    data = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)
    batch = {b"batch_label": batch_label.encode(),
             label_key.encode(): [int(v) for v in labels],
             b"data": data,
             b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))]}
    if label_key == "fine_labels":
        batch[b"coarse_labels"] = [int(v) // 5 for v in labels]
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(batch)
    return path


def random_split(n: int, shape: tuple[int, ...], num_classes: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images of `shape` per sample, labels in [0, num_classes)) from `seed`."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, *shape), dtype=np.uint8),
            rng.integers(0, num_classes, size=n).astype(np.int64))
