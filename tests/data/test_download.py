"""Downloads: mirrors, md5 check, atomic rename, tar extraction, progress bar; network faked."""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
from pathlib import Path

import pytest
from rankwise_test_formats import random_split, write_cifar_batch, write_idx

from rankwise.data import download, load_dataset, sources
from rankwise.errors import DatasetIntegrityError, DatasetNotFoundError


def _fake_fetch(served: dict[str, Path], calls: list[str]):
    def fetch(url: str, dest: Path, timeout: float = 60.0, progress: bool | None = None) -> None:
        calls.append(url)
        if url not in served:
            raise OSError(f"no route to {url}")
        shutil.copyfile(served[url], dest)
    return fetch


def _with_md5(monkeypatch: pytest.MonkeyPatch, name: str, files: dict[str, Path]) -> list[str]:
    """Point `name`'s archives at the md5s of our tiny files; returns the first-mirror URLs."""
    spec = sources.SPECS[name]
    archives = tuple(sources.Archive(a.filename, sources.md5_file(files[a.filename]) if
                                     a.filename in files else a.md5, a.urls, a.subdir,
                                     a.extract_to) for a in spec.archives)
    monkeypatch.setitem(sources.SPECS, name, sources.DatasetSpec(
        spec.name, spec.kind, spec.files, spec.subdirs, spec.md5, archives))
    return [a.urls[0] for a in archives]


def _mnist_test_files(src: Path) -> dict[str, Path]:
    src.mkdir()
    images, labels = random_split(9, (28, 28), 10, seed=2)
    return {p.name: p for p in (write_idx(src / "t10k-images-idx3-ubyte", images),
                                write_idx(src / "t10k-labels-idx1-ubyte", labels))}


def test_idx_download_uses_second_mirror(tmp_path: Path, isolated: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    files = _mnist_test_files(tmp_path / "src")
    _with_md5(monkeypatch, "mnist", files)
    served = {a.urls[1]: files[a.filename] for a in sources.SPECS["mnist"].archives
              if a.filename in files}  # first mirror is "down"
    calls: list[str] = []
    monkeypatch.setattr(download, "_fetch", _fake_fetch(served, calls))
    ds = load_dataset("mnist", False, download=True, verify="structure")
    assert len(ds) == 9
    target = tmp_path / "home" / ".cache" / "rankwise" / "mnist"
    assert (target / "t10k-images-idx3-ubyte.gz").is_file()
    assert not list(target.glob(".*part"))  # no temp files left
    assert any("ossci" in c for c in calls) and any("lecun" in c for c in calls)


def test_download_checksum_mismatch(tmp_path: Path, isolated: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Official md5s kept; served files differ -> DatasetIntegrityError, nothing saved."""
    files = _mnist_test_files(tmp_path / "src")
    served = {u: files[a.filename] for a in sources.SPECS["mnist"].archives for u in a.urls
              if a.filename in files}
    served.update({u: files["t10k-images-idx3-ubyte.gz"] for a in sources.SPECS["mnist"].archives
                   for u in a.urls if a.filename not in files})
    monkeypatch.setattr(download, "_fetch", _fake_fetch(served, []))
    root = tmp_path / "dl"
    with pytest.raises(DatasetIntegrityError, match="checksum") as err:
        load_dataset("mnist", False, data_dir=root, download=True)
    assert "expected" in str(err.value)
    assert [p for p in root.rglob("*") if p.is_file()] == []


def test_download_unreachable(tmp_path: Path, isolated: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Every URL down: one error with the places looked at, each URL tried and the fixes."""
    calls: list[str] = []
    monkeypatch.setattr(download, "_fetch", _fake_fetch({}, calls))
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", True)
    msg = str(err.value)
    first = msg.splitlines()[0]
    assert "every download URL failed" in first and "network" in first
    assert "apt-get install dataset-fashion-mnist" in first and "--data-dir" in first
    assert len(calls) == 2 and "zalando" in calls[1]  # official S3, then the GitHub mirror
    for url in calls:
        assert f"  {url}: no route to {url}" in msg
    assert f"  {isolated / 'home' / '.cache' / 'rankwise'}\n" in msg
    assert f"  {isolated / 'usr-share-datasets' / 'fashion-mnist'}\n" in msg


def test_every_dataset_has_official_url_and_a_mirror() -> None:
    hosts = {"mnist": ("ossci-datasets", "lecun.com"),
             "fashion-mnist": ("fashion-mnist.s3", "zalandoresearch/fashion-mnist"),
             "cifar10": ("cs.toronto.edu", "bcebos.com"), "cifar100": ("cs.toronto.edu",
                                                                     "bcebos.com")}
    for name, (first, second) in hosts.items():
        spec = sources.SPECS[name]
        assert spec.archives
        for archive in spec.archives:
            assert len(archive.urls) == 2
            assert first in archive.urls[0] and second in archive.urls[1]
            assert all(u.endswith("/" + archive.filename) for u in archive.urls)
            assert len(archive.md5) == 32


def _cifar_archive(tmp_path: Path, evil: bool = False) -> Path:
    folder = tmp_path / "build" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = random_split(5, (3, 32, 32), 10, seed=4)
    write_cifar_batch(folder / "test_batch", images, labels)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
        if evil:
            info = tarfile.TarInfo("../escape.txt")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    return archive


def test_cifar_archive_download_and_extract(tmp_path: Path, isolated: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _cifar_archive(tmp_path)
    urls = _with_md5(monkeypatch, "cifar10", {"cifar-10-python.tar.gz": archive})
    monkeypatch.setattr(download, "_fetch", _fake_fetch({urls[0]: archive}, []))
    root = tmp_path / "dl"
    ds = load_dataset("cifar10", False, data_dir=root, download=True, verify="structure")
    assert ds.images.shape == (5, 3, 32, 32)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # archive removed


def test_cifar_mirror_used_when_toronto_fails(tmp_path: Path, isolated: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _cifar_archive(tmp_path)
    _with_md5(monkeypatch, "cifar10", {"cifar-10-python.tar.gz": archive})
    mirror = sources.SPECS["cifar10"].archives[0].urls[1]
    calls: list[str] = []
    monkeypatch.setattr(download, "_fetch", _fake_fetch({mirror: archive}, calls))
    ds = load_dataset("cifar10", False, verify="structure")  # auto: into ~/.cache/rankwise
    assert len(ds) == 5 and len(calls) == 2 and calls[1] == mirror
    assert (isolated / "home" / ".cache" / "rankwise" / "cifar-10-batches-py" / "test_batch"
            ).is_file()


def test_cifar_archive_with_unsafe_member(tmp_path: Path, isolated: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _cifar_archive(tmp_path, evil=True)
    urls = _with_md5(monkeypatch, "cifar10", {"cifar-10-python.tar.gz": archive})
    monkeypatch.setattr(download, "_fetch", _fake_fetch({urls[0]: archive}, []))
    root = tmp_path / "dl"
    with pytest.raises(DatasetIntegrityError, match="unsafe"):
        load_dataset("cifar10", False, data_dir=root, download=True)
    assert not (tmp_path / "escape.txt").exists() and list(root.iterdir()) == []


class _Response(io.BytesIO):
    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}

    def __enter__(self):  # noqa: ANN204
        return self


@pytest.mark.parametrize("progress", [False, True])
def test_fetch_streams_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str], progress: bool) -> None:
    """The real `_fetch` copies what urlopen returns (urlopen itself faked: no network); the
    progress bar goes to stderr only when asked for (default: only on a terminal)."""
    payload = gzip.compress(bytes(range(256)) * 2000)
    opened: list[str] = []

    def urlopen(request, timeout):  # noqa: ANN001, ANN202
        opened.append(request.full_url)
        assert timeout > 0 and request.get_header("User-agent")
        return _Response(payload)

    monkeypatch.setattr(download.urllib.request, "urlopen", urlopen)
    dest = tmp_path / "f"
    download._fetch("https://example.invalid/data/f.gz", dest, progress=progress)
    assert dest.read_bytes() == payload and opened == ["https://example.invalid/data/f.gz"]
    err = capsys.readouterr().err
    assert ("f.gz" in err) == progress
    if not progress:
        assert err == ""


def test_fetch_is_quiet_when_stderr_is_not_a_terminal(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(download.urllib.request, "urlopen",
                        lambda request, timeout: _Response(b"x" * 5000))
    download._fetch("https://example.invalid/g.gz", tmp_path / "g")  # pytest's stderr: no TTY
    assert capsys.readouterr().err == "" and (tmp_path / "g").read_bytes() == b"x" * 5000
