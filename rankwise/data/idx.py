"""Reader of the IDX format used by MNIST and Fashion-MNIST (plain or gzipped files).

Layout: magic (2 zero bytes, type code 0x08 = uint8, number of dims), one big-endian uint32 per
dim, then the row-major uint8 payload. Images are idx3 (N, H, W), labels idx1 (N,).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from rankwise.errors import DatasetIntegrityError

IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801


def read_bytes(path: Path) -> bytes:
    """The (decompressed if `.gz`) content of `path`; DatasetIntegrityError on a bad gzip."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetIntegrityError(
            f"{path}: cannot decompress ({e}); the file is truncated or not gzip. "
            f"Delete it and re-download (download=True)") from e


def read_idx(path: Path, expect_ndim: int) -> np.ndarray:
    """The uint8 array stored in an IDX file with `expect_ndim` dims (3: images, 1: labels).

    Checks the magic number and that the payload size equals the product of the header dims.
    """
    data = read_bytes(path)
    magic_expected = IMAGE_MAGIC if expect_ndim == 3 else LABEL_MAGIC
    if len(data) < 4:
        raise DatasetIntegrityError(f"{path}: {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic != magic_expected:
        raise DatasetIntegrityError(
            f"{path}: IDX magic 0x{magic:08x}, expected 0x{magic_expected:08x} "
            f"({'images' if expect_ndim == 3 else 'labels'}); wrong or corrupt file")
    header = 4 + 4 * expect_ndim
    if len(data) < header:
        raise DatasetIntegrityError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(expect_ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise DatasetIntegrityError(
            f"{path}: {len(data)} bytes but the header {dims} needs {expected}; the file is "
            f"truncated or corrupt. Delete it and re-download (download=True)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_idx_split(image_path: Path, label_path: Path, num_classes: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 1, H, W), labels int64 (N,)) from a pair of IDX files, cross-checked."""
    images = read_idx(image_path, 3)
    labels = read_idx(label_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise DatasetIntegrityError(
            f"{image_path} has {images.shape[0]} images but {label_path} has {labels.shape[0]} "
            f"labels; the files belong to different splits")
    if labels.size and int(labels.max()) >= num_classes:
        raise DatasetIntegrityError(
            f"{label_path}: label {int(labels.max())} outside [0, {num_classes})")
    return images[:, None, :, :].copy(), labels.astype(np.int64)
