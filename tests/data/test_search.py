"""Search places, the download folder and the $RANKWISE_OFFLINE switch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rankwise.data import search
from rankwise.errors import ConfigError, DatasetNotFoundError


def test_default_search_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKWISE_DATA", os.pathsep.join([str(isolated / "a"), "",
                                                         str(isolated / "b")]))
    assert search.search_roots("cifar10") == [
        isolated / "a", isolated / "b", isolated / "usr-share-datasets" / "cifar10",
        isolated / "work" / "shared" / "data", isolated / "home" / ".cache" / "rankwise"]


def test_explicit_data_dir_is_the_only_root(isolated: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKWISE_DATA", str(isolated / "a"))
    assert search.search_roots("mnist", "~/d") == [isolated / "home" / "d"]


@pytest.mark.parametrize(("value", "offline"), [(None, False), ("", False), ("0", False),
                                                ("off", False), ("1", True), (" On ", True)])
def test_offline_values(monkeypatch: pytest.MonkeyPatch, value: str | None,
                        offline: bool) -> None:
    if value is None:
        monkeypatch.delenv("RANKWISE_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("RANKWISE_OFFLINE", value)
    assert search.offline_from_env() is offline


def test_offline_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKWISE_OFFLINE", "2")
    with pytest.raises(ConfigError, match="RANKWISE_OFFLINE"):
        search.offline_from_env()


def test_download_root_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = isolated / "home" / ".cache" / "rankwise"
    assert search.download_root() == cache and cache.is_dir()
    assert search.download_root(isolated / "x") == isolated / "x"
    monkeypatch.setenv("RANKWISE_DATA", str(isolated / "env"))
    assert search.download_root() == isolated / "env"


def test_download_root_none_usable(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = isolated / "file"
    blocker.write_text("")
    monkeypatch.setenv("RANKWISE_DATA", str(blocker / "d"))
    monkeypatch.setenv("HOME", str(blocker))  # ~/.cache/rankwise under a file
    with pytest.raises(DatasetNotFoundError, match="no writable folder") as err:
        search.download_root()
    assert str(blocker / "d") in str(err.value) and "RANKWISE_DATA" in str(err.value)
