"""CIFAR batch reader: restricted unpickler, structure checks, cifar10/cifar100 loaders."""

from __future__ import annotations

import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest
from rankwise_test_formats import random_split, write_cifar_batch

from rankwise.data import load_dataset
from rankwise.data.cifar import load_pickle, read_batch
from rankwise.errors import DatasetIntegrityError

ALLOWED = {"numpy.core.multiarray _reconstruct", "numpy._core.multiarray _reconstruct",
           "numpy ndarray", "numpy dtype"}


def _globals(path: Path) -> set[str]:
    return {str(arg) for op, arg, _ in pickletools.genops(path.read_bytes())
            if op.name == "GLOBAL"}


def test_writer_mimics_official_format(tmp_path: Path) -> None:
    """Our test files reference only what the official batches reference (else they'd prove
    nothing about the restricted unpickler)."""
    images, labels = random_split(4, (3, 32, 32), 10, seed=0)
    path = write_cifar_batch(tmp_path / "b", images, labels)
    assert _globals(path) <= ALLOWED and _globals(path)
    assert path.read_bytes()[:2] == b"\x80\x02"


def test_cifar10_train_split_concatenates_batches(tmp_path: Path, isolated: Path) -> None:
    d = tmp_path / "root" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    parts = [random_split(3, (3, 32, 32), 10, seed=i) for i in range(5)]
    for i, (images, labels) in enumerate(parts, start=1):
        write_cifar_batch(d / f"data_batch_{i}", images, labels)
    ds = load_dataset("cifar10", train=True, data_dir=tmp_path / "root", verify="structure")
    assert ds.images.shape == (15, 3, 32, 32)
    assert np.array_equal(ds.images.numpy(), np.concatenate([p[0] for p in parts]))
    assert np.array_equal(ds.labels.numpy(), np.concatenate([p[1] for p in parts]))
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2023, 0.1994, 0.2010)


def test_channel_layout_is_rgb_planes(tmp_path: Path) -> None:
    """Row layout: 1024 R, then 1024 G, then 1024 B, each row-major 32x32."""
    row = np.zeros((1, 3072), np.uint8)
    row[0, 1024 + 32 * 2 + 5] = 200  # G channel, y=2, x=5
    path = write_cifar_batch(tmp_path / "b", row, np.array([1]))
    images, _ = read_batch(path, "labels", 10)
    assert images[0, 1, 2, 5] == 200 and images.sum() == 200


def test_cifar100_uses_fine_labels(tmp_path: Path, isolated: Path) -> None:
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    images, labels = random_split(6, (3, 32, 32), 100, seed=1)
    write_cifar_batch(d / "test", images, labels, label_key="fine_labels")
    ds = load_dataset("cifar100", train=False, data_dir=tmp_path, verify="structure")
    assert ds.num_classes == 100 and np.array_equal(ds.labels.numpy(), labels)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": _Payload(marker), "labels": [0]}, protocol=2))
    assert any("system" in g for g in _globals(path))
    with pytest.raises(DatasetIntegrityError, match="system") as err:
        load_pickle(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_restricted_unpickler_refuses_other_builtins(tmp_path: Path) -> None:
    path = tmp_path / "b"
    path.write_bytes(pickle.dumps({"data": bytearray(b"x")}, protocol=2))  # builtins.bytearray
    with pytest.raises(DatasetIntegrityError, match="refusing"):
        load_pickle(path)


@pytest.mark.parametrize("mutate, match", [
    (lambda b: b.pop(b"labels"), "missing"),
    (lambda b: b.__setitem__(b"data", np.zeros((2, 100), np.uint8)), "3072"),
    (lambda b: b.__setitem__(b"data", np.zeros((2, 3072), np.float32)), "uint8"),
    (lambda b: b.__setitem__(b"labels", [0, 10]), "outside"),
    (lambda b: b.__setitem__(b"labels", [0]), "labels for 2 images"),
])
def test_structure_errors(tmp_path: Path, mutate, match: str) -> None:
    from rankwise_test_formats import Py2Pickler

    batch = {b"batch_label": b"x", b"labels": [1, 2], b"data": np.zeros((2, 3072), np.uint8),
             b"filenames": [b"a", b"b"]}
    mutate(batch)
    path = tmp_path / "b"
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(batch)
    with pytest.raises(DatasetIntegrityError, match=match):
        read_batch(path, "labels", 10)


def test_truncated_pickle(tmp_path: Path) -> None:
    images, labels = random_split(3, (3, 32, 32), 10, seed=0)
    path = write_cifar_batch(tmp_path / "b", images, labels)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetIntegrityError, match="truncated"):
        read_batch(path, "labels", 10)


# The `../shared/data` search place (relative to the working directory), where a shared CIFAR-10
# copy with placeholder filenames and its own md5s may live.
SHARED = Path.cwd().parent / "shared" / "data" / "cifar10" / "cifar-10-batches-py"


@pytest.mark.skipif(not (SHARED / "test_batch").is_file(),
                    reason="no shared CIFAR-10 copy under ../shared/data/cifar10")
def test_real_shared_cifar10_test_split(tmp_path: Path) -> None:
    """The shared copy (placeholder filenames, own md5s) passes md5 verification."""
    ds = load_dataset("cifar10", train=False, data_dir=SHARED.parent, cache_dir=tmp_path)
    assert ds.images.shape == (10000, 3, 32, 32)
    assert ds.labels.bincount(minlength=10).tolist() == [1000] * 10
