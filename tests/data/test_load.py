"""load_dataset: search order, not-found message, md5 verification, decoded-array cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rankwise_test_formats import random_split, write_cifar_batch

from rankwise.data import load, load_dataset, sources
from rankwise.errors import ConfigError, DatasetIntegrityError, DatasetNotFoundError


def test_missing_dataset_lists_every_path_and_fix(tmp_path: Path, isolated: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKWISE_DATA", str(tmp_path / "envdir"))
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", train=True, download=False)
    msg = str(err.value)
    expected_roots = [tmp_path / "envdir", tmp_path / "usr-share-datasets" / "fashion-mnist",
                      tmp_path / "work" / "shared" / "data", tmp_path / "home" / ".cache" /
                      "rankwise"]
    positions = [msg.index(f"  {root}\n") for root in expected_roots]
    assert positions == sorted(positions)  # listed in search order
    assert f"{tmp_path / 'envdir' / 'FashionMNIST' / 'raw'}" in msg  # subfolders too
    first = msg.splitlines()[0]
    assert "downloads are off (download=False" in first
    assert "--data-dir" in first and "apt-get install dataset-fashion-mnist" in first
    assert "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]" in msg


def test_explicit_data_dir_is_the_only_place_looked(tmp_path: Path, isolated: Path,
                                                    idx_writer) -> None:
    idx_writer(tmp_path / "home" / ".cache" / "rankwise" / "mnist", train=True, n=2)
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", True, data_dir=tmp_path / "given", verify="structure")
    msg = str(err.value)
    assert f"data_dir {tmp_path / 'given'} does not exist" in msg.splitlines()[0]
    looked = [line.strip() for line in msg.splitlines() if line.startswith("  ")]
    assert looked[0] == str(tmp_path / "given")
    assert all(line.startswith(str(tmp_path / "given")) for line in looked)


def test_search_order_data_dir_beats_env(tmp_path: Path, isolated: Path, idx_writer,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    idx_writer(tmp_path / "a", train=False, n=3)
    idx_writer(tmp_path / "b" / "mnist", train=False, n=4)
    monkeypatch.setenv("RANKWISE_DATA", str(tmp_path / "b"))
    assert len(load_dataset("mnist", False, verify="structure")) == 4
    assert len(load_dataset("mnist", False, data_dir=tmp_path / "a", verify="structure")) == 3


def test_relative_shared_data_and_cache_roots(tmp_path: Path, isolated: Path,
                                              idx_writer) -> None:
    idx_writer(tmp_path / "home" / ".cache" / "rankwise" / "mnist", train=True, n=2)
    assert len(load_dataset("mnist", True, verify="structure")) == 2
    idx_writer(tmp_path / "work" / "shared" / "data" / "mnist", train=True, n=5)  # ../shared/data
    assert len(load_dataset("mnist", True, verify="structure")) == 5


def _fake_cifar_test_batch(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    images, labels = random_split(4, (3, 32, 32), 10, seed=0)
    return write_cifar_batch(directory / "test_batch", images, labels)


def test_md5_mismatch_raises_naming_file(tmp_path: Path, isolated: Path) -> None:
    path = _fake_cifar_test_batch(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DatasetIntegrityError, match="md5") as err:
        load_dataset("cifar10", False, data_dir=tmp_path)
    assert str(path) in str(err.value) and "verify='structure'" in str(err.value)
    assert len(load_dataset("cifar10", False, data_dir=tmp_path, verify="structure")) == 4


def test_md5_accepts_listed_copy(tmp_path: Path, isolated: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = _fake_cifar_test_batch(tmp_path / "cifar-10-batches-py")
    spec = sources.SPECS["cifar10"]
    md5 = dict(spec.md5, test_batch=("0" * 32, sources.md5_file(path)))
    monkeypatch.setitem(sources.SPECS, "cifar10",
                        sources.DatasetSpec(spec.name, spec.kind, spec.files, spec.subdirs, md5))
    assert len(load_dataset("cifar10", False, data_dir=tmp_path)) == 4


def test_second_load_comes_from_cache(tmp_path: Path, isolated: Path, idx_writer,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    d = idx_writer(tmp_path / "d", train=True, n=6)
    cache = tmp_path / "cache"
    first = load_dataset("mnist", True, data_dir=d, verify="structure", cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 2

    def fail(*args, **kwargs):
        raise AssertionError("decoded again instead of read from the cache")

    monkeypatch.setattr(load, "_decode", fail)
    second = load_dataset("mnist", True, data_dir=d, verify="structure", cache_dir=cache)
    assert np.array_equal(first.images.numpy(), second.images.numpy())
    assert np.array_equal(first.labels.numpy(), second.labels.numpy())
    with pytest.raises(AssertionError, match="decoded again"):  # a changed file is re-decoded
        idx_writer(d, train=True, n=7, seed=1)
        load_dataset("mnist", True, data_dir=d, verify="structure", cache_dir=cache)


def test_cache_disabled_writes_nothing(tmp_path: Path, isolated: Path, idx_writer) -> None:
    d = idx_writer(tmp_path / "d", train=True, n=3)
    load_dataset("mnist", True, data_dir=d, verify="structure", cache=False)
    assert not (tmp_path / "home" / ".cache" / "rankwise" / "decoded").exists()


def test_bad_arguments(tmp_path: Path, isolated: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="unknown dataset"):
        load_dataset("imagenet-22k", True)
    with pytest.raises(ConfigError, match="unexpected options"):
        load_dataset("mnist", True, size=3)
    with pytest.raises(ConfigError, match="verify"):
        load_dataset("mnist", True, verify="sha1")
