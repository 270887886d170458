"""Fixtures for the data tests: no real network, an isolated environment, an IDX split writer.

Also registers `dataformats.py` (the file-format writers) as the module `rankwise_test_formats`,
so test modules can `from rankwise_test_formats import ...` whatever pytest's import mode (the
tests folders have no `__init__.py`, so a plain `import dataformats` or `from conftest import`
could pick up another folder's module).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


def _register_formats() -> None:
    name = "rankwise_test_formats"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(
            "dataformats.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


_register_formats()


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any real URL opened by the download code fails the test (tests fake `_fetch` instead)."""
    from rankwise.data import download

    def refuse(*args, **kwargs):
        raise AssertionError(f"a data test tried to open a real URL: {args[:1]}")

    monkeypatch.setattr(download.urllib.request, "urlopen", refuse)


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME and cwd inside tmp_path, no $RANKWISE_DATA / $RANKWISE_OFFLINE, and Debian's
    location redirected to an empty folder under tmp_path; returns tmp_path.

    Search places then: tmp_path/usr-share-datasets/<name>, tmp_path/work/shared/data (the
    cwd's ../shared/data), tmp_path/home/.cache/rankwise.
    """
    from rankwise.data import search

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RANKWISE_DATA", raising=False)
    monkeypatch.delenv("RANKWISE_OFFLINE", raising=False)
    work = tmp_path / "work" / "main"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setattr(search, "DEBIAN_ROOT", tmp_path / "usr-share-datasets")
    return tmp_path


@pytest.fixture
def idx_writer() -> Callable[..., Path]:
    """`write(dir, train, n, shape=(28, 28), compress=True, seed=0)` -> dir with both IDX files."""

    def write(directory: Path, train: bool, n: int, shape: tuple[int, int] = (28, 28),
              compress: bool = True, seed: int = 0, num_classes: int = 10) -> Path:
        from rankwise_test_formats import random_split, write_idx

        directory.mkdir(parents=True, exist_ok=True)
        images, labels = random_split(n, shape, num_classes, seed)
        prefix = "train" if train else "t10k"
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, compress)
        return directory

    return write


class FakeNet:
    """Stands in for `rankwise.data.download._fetch`: serves local files by URL, records calls.

    `serve(name, files, mirror)`: give dataset `name`'s archives the md5s of the tiny `files`
    ({archive filename: path}) and serve each at its URL number `mirror` (0 official, 1 mirror).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from rankwise.data import download

        self.monkeypatch = monkeypatch
        self.served: dict[str, Path] = {}
        self.calls: list[str] = []
        monkeypatch.setattr(download, "_fetch", self.fetch)

    def fetch(self, url: str, dest: Path, timeout: float = 30.0,
              progress: bool | None = None) -> None:
        self.calls.append(url)
        if url not in self.served:
            raise OSError(f"no route to {url}")
        dest.write_bytes(self.served[url].read_bytes())

    def serve(self, name: str, files: dict[str, Path], mirror: int = 0) -> None:
        from rankwise.data import sources

        spec = sources.SPECS[name]
        archives = tuple(sources.Archive(
            a.filename, sources.md5_file(files[a.filename]) if a.filename in files else a.md5,
            a.urls, a.subdir, a.extract_to) for a in spec.archives)
        self.monkeypatch.setitem(sources.SPECS, name, sources.DatasetSpec(
            spec.name, spec.kind, spec.files, spec.subdirs, spec.md5, archives))
        for a in archives:
            if a.filename in files:
                self.served[a.urls[mirror]] = files[a.filename]


@pytest.fixture
def fake_net(monkeypatch: pytest.MonkeyPatch) -> FakeNet:
    """A `FakeNet` installed in place of the network (nothing served until `serve`)."""
    return FakeNet(monkeypatch)


@pytest.fixture
def idx_files(tmp_path: Path) -> Callable[..., dict[str, Path]]:
    """`make(train=None, n=6)` -> {official .gz name: path} of tiny IDX files (None: both
    splits), written under tmp_path/served, for `FakeNet.serve`."""

    def make(train: bool | None = None, n: int = 6) -> dict[str, Path]:
        from rankwise_test_formats import random_split, write_idx

        src = tmp_path / "served"
        src.mkdir(exist_ok=True)
        out: dict[str, Path] = {}
        for split in ((True, False) if train is None else (train,)):
            images, labels = random_split(n, (28, 28), 10, seed=int(split))
            prefix = "train" if split else "t10k"
            for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
                path = write_idx(src / f"{prefix}-{kind}-ubyte", array)
                out[path.name] = path
        return out

    return make
