"""Fixtures for the data tests: an isolated environment and an IDX split writer.

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


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME and cwd inside tmp_path, no $RANKWISE_DATA, and the fixed system locations redirected
    to empty folders under tmp_path; returns tmp_path."""
    from rankwise.data import sources

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RANKWISE_DATA", raising=False)
    work = tmp_path / "work" / "main"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setattr(sources, "DEBIAN_ROOT", tmp_path / "usr-share-datasets")
    monkeypatch.setattr(sources, "SHARED_ROOT", tmp_path / "abs-shared-data")
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
