"""IDX reader and the mnist / fashion-mnist loaders on tiny files in the original format."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from rankwise_test_formats import random_split, write_idx

from rankwise.data import load_dataset
from rankwise.data.idx import read_idx
from rankwise.errors import DatasetIntegrityError


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_split_roundtrip(tmp_path: Path, isolated: Path, name: str, compress: bool) -> None:
    d = tmp_path / "data"
    d.mkdir()
    images, labels = random_split(37, (28, 28), 10, seed=3)
    write_idx(d / "t10k-images-idx3-ubyte", images, compress)
    write_idx(d / "t10k-labels-idx1-ubyte", labels, compress)
    ds = load_dataset(name, train=False, data_dir=d, verify="structure")
    assert ds.images.shape == (37, 1, 28, 28) and str(ds.images.dtype) == "torch.uint8"
    assert np.array_equal(ds.images[:, 0].numpy(), images)
    assert np.array_equal(ds.labels.numpy(), labels)
    assert str(ds.labels.dtype) == "torch.int64"
    assert ds.num_classes == 10 and ds.name == name and len(ds.mean) == 1


def test_usual_subfolder_is_found(tmp_path: Path, isolated: Path, idx_writer) -> None:
    idx_writer(tmp_path / "root" / "FashionMNIST" / "raw", train=True, n=5)
    ds = load_dataset("fashion-mnist", train=True, data_dir=tmp_path / "root",
                      verify="structure")
    assert len(ds) == 5


def test_wrong_magic_is_rejected(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x", np.zeros((4, 2, 2), np.uint8), compress=False)
    raw = bytearray(path.read_bytes())
    raw[3] = 1  # claims 1 dim: the labels magic, not images
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetIntegrityError, match="magic"):
        read_idx(path, 3)


def test_truncated_payload_is_rejected(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x", np.zeros((4, 3, 3), np.uint8), compress=True)
    payload = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(payload[:-5]))
    with pytest.raises(DatasetIntegrityError, match="truncated") as err:
        read_idx(path, 3)
    assert str(path) in str(err.value)


def test_truncated_gzip_is_rejected(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x", np.arange(300, dtype=np.uint8) % 7, compress=True)
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DatasetIntegrityError, match="decompress"):
        read_idx(path, 1)


def test_mismatched_image_and_label_counts(tmp_path: Path, isolated: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte", np.zeros((6, 28, 28), np.uint8))
    write_idx(d / "train-labels-idx1-ubyte", np.zeros((5,), np.uint8))
    with pytest.raises(DatasetIntegrityError, match="different splits"):
        load_dataset("mnist", train=True, data_dir=d, verify="structure")


def test_label_out_of_range(tmp_path: Path, isolated: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(d / "train-labels-idx1-ubyte", np.array([0, 10, 2], np.uint8))
    with pytest.raises(DatasetIntegrityError, match="outside"):
        load_dataset("mnist", train=True, data_dir=d, verify="structure")


DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (DEBIAN / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian dataset-fashion-mnist not installed "
                           "(apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_debian(tmp_path: Path) -> None:
    """The Debian package's files (found via the default search) pass md5 and structure checks."""
    ds = load_dataset("fashion-mnist", train=False, cache_dir=tmp_path)
    assert ds.images.shape == (10000, 1, 28, 28)
    assert ds.labels.bincount(minlength=10).tolist() == [1000] * 10  # balanced test split
