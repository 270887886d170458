"""The download rule (auto / True / False / $RANKWISE_OFFLINE) and `require_dataset`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rankwise.data import load_dataset, require_dataset
from rankwise.errors import ConfigError, DatasetIntegrityError, DatasetNotFoundError


def _cache(isolated: Path) -> Path:
    return isolated / "home" / ".cache" / "rankwise"


def test_auto_download_on_first_use_then_read_from_disk(isolated: Path, fake_net,
                                                        idx_files) -> None:
    fake_net.serve("fashion-mnist", idx_files(train=False, n=7))
    ds = load_dataset("fashion-mnist", False, verify="structure")  # download left at None
    assert len(ds) == 7 and len(fake_net.calls) == 2  # the test split's two files only
    saved = sorted(p.name for p in (_cache(isolated) / "fashion-mnist").iterdir())
    assert saved == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert len(load_dataset("fashion-mnist", False, verify="structure")) == 7
    assert len(fake_net.calls) == 2  # found on disk the second time


def test_download_goes_to_first_writable_rankwise_data(isolated: Path, fake_net, idx_files,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = isolated / "a-file"
    blocker.write_text("not a folder")
    target = isolated / "datasets"
    monkeypatch.setenv("RANKWISE_DATA", os.pathsep.join([str(blocker / "sub"), str(target)]))
    fake_net.serve("mnist", idx_files(train=True, n=3))
    assert len(load_dataset("mnist", True, verify="structure")) == 3
    assert (target / "mnist" / "train-images-idx3-ubyte.gz").is_file()
    assert not (_cache(isolated) / "mnist").exists()


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_offline_env_forbids_download_even_when_asked(isolated: Path, fake_net, idx_files,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      value: str) -> None:
    fake_net.serve("fashion-mnist", idx_files())
    monkeypatch.setenv("RANKWISE_OFFLINE", value)
    for download in (None, True):
        with pytest.raises(DatasetNotFoundError) as err:
            load_dataset("fashion-mnist", True, download=download)
        first = str(err.value).splitlines()[0]
        assert f"downloads are off ($RANKWISE_OFFLINE={value})" in first
        assert "unset $RANKWISE_OFFLINE" in first and "apt-get install" in first
    assert fake_net.calls == []


def test_download_false_forbids_download(isolated: Path, fake_net, idx_files) -> None:
    fake_net.serve("mnist", idx_files())
    with pytest.raises(DatasetNotFoundError, match=r"download=False, CLI --offline"):
        require_dataset("mnist", download=False)
    assert fake_net.calls == []


def test_offline_env_with_bad_value(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKWISE_OFFLINE", "maybe")
    with pytest.raises(ConfigError, match="RANKWISE_OFFLINE='maybe'"):
        load_dataset("mnist", True)


def test_explicit_data_dir_is_not_filled_unless_asked(isolated: Path, fake_net,
                                                      idx_files) -> None:
    fake_net.serve("mnist", idx_files(train=False, n=4))
    given = isolated / "given"
    given.mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", False, data_dir=given)
    first = str(err.value).splitlines()[0]
    assert f"data_dir {given} does not hold them" in first and "download=True" in first
    assert fake_net.calls == [] and list(given.iterdir()) == []
    missing = isolated / "new" / "folder"
    assert len(load_dataset("mnist", False, data_dir=missing, download=True,
                            verify="structure")) == 4  # created, then filled
    assert (missing / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


def test_data_dir_that_is_a_file_fails_even_with_download(isolated: Path, fake_net,
                                                          idx_files) -> None:
    fake_net.serve("mnist", idx_files())
    path = isolated / "notes.txt"
    path.write_text("x")
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", True, data_dir=path, download=True)
    first = str(err.value).splitlines()[0]
    assert f"data_dir {path} is a file, not a folder" in first and "at a folder" in first
    assert fake_net.calls == [] and path.read_text() == "x"


def test_md5_mismatch_on_official_url_falls_back_to_mirror(isolated: Path, fake_net,
                                                           idx_files, tmp_path: Path) -> None:
    files = idx_files(train=False)
    fake_net.serve("fashion-mnist", files, mirror=1)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"\x1f\x8b truncated")
    for url in list(fake_net.served):
        fake_net.served[url.replace(
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")] = bad
    assert len(load_dataset("fashion-mnist", False, verify="structure")) == 6
    assert len(fake_net.calls) == 4
    folder = _cache(isolated) / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)  # no .part left


def test_md5_mismatch_everywhere_saves_nothing(isolated: Path, fake_net, tmp_path: Path,
                                               idx_files) -> None:
    fake_net.serve("mnist", idx_files(train=True))
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"tampered")
    fake_net.served = {url: bad for url in fake_net.served}
    with pytest.raises(DatasetIntegrityError, match="checksum"):
        load_dataset("mnist", True)
    assert [p for p in _cache(isolated).rglob("*") if p.is_file()] == []


def test_require_dataset_finds_fetches_and_skips_synthetic(isolated: Path, fake_net, idx_files,
                                                           idx_writer) -> None:
    assert require_dataset("synthetic") is None
    here = idx_writer(isolated / "work" / "shared" / "data" / "mnist", train=True, n=2)
    idx_writer(here, train=False, n=2)
    assert require_dataset("MNIST") == here and fake_net.calls == []
    fake_net.serve("fashion-mnist", idx_files())
    assert require_dataset("FashionMNIST") == _cache(isolated) / "fashion-mnist"
    assert len(fake_net.calls) == 4  # both splits, nothing decoded
    assert not (_cache(isolated) / "decoded").exists()


def test_require_dataset_raises_the_one_error(isolated: Path, fake_net) -> None:
    given = isolated / "empty"
    given.mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        require_dataset("cifar10", data_dir=given)
    msg = str(err.value)
    assert msg.startswith("cifar10 train split not found: data_dir") and str(given) in msg
    assert "data_batch_1, data_batch_2" in msg
    with pytest.raises(DatasetNotFoundError, match="unknown dataset"):
        require_dataset("imagenet-22k")
