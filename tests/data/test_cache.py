"""data.cache: a decoded split round-trips; a damaged, mistyped or mismatched cache entry reads as
absent (decoded again) instead of failing or being used; an unwritable cache leaves nothing."""

from __future__ import annotations

import numpy as np

from rankwise.data.cache import cache_key, load_cached, store_cached


def _split(n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8), np.arange(n, dtype=np.int64)


def test_round_trip_and_key_follows_the_source_files(tmp_path):
    images, labels = _split()
    assert load_cached(tmp_path, "toy", True, "k1") is None
    assert store_cached(tmp_path, "toy", True, "k1", images, labels)
    got = load_cached(tmp_path, "toy", True, "k1")
    assert got is not None and np.array_equal(got[0], images) and np.array_equal(got[1], labels)
    assert load_cached(tmp_path, "toy", False, "k1") is None  # the other split is not this one
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    key = cache_key("toy", True, [src], "md5")
    assert key == cache_key("toy", True, [src], "md5")
    assert key != cache_key("toy", True, [src], "size")
    src.write_bytes(b"abcd")  # a changed source file names another entry
    assert key != cache_key("toy", True, [src], "md5")


def _entry(tmp_path, kind: str) -> str:
    return str(next(tmp_path.glob(f"toy-train-k1-{kind}.npy")))


def test_damaged_or_mismatched_entries_read_as_absent(tmp_path):
    images, labels = _split()
    store_cached(tmp_path, "toy", True, "k1", images, labels)
    path = _entry(tmp_path, "images")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # truncated by a crash
    assert load_cached(tmp_path, "toy", True, "k1") is None
    store_cached(tmp_path, "toy", True, "k1", images.astype(np.float32), labels)  # wrong dtype
    assert load_cached(tmp_path, "toy", True, "k1") is None
    store_cached(tmp_path, "toy", True, "k1", images, labels[:-1])  # labels do not match
    assert load_cached(tmp_path, "toy", True, "k1") is None
    store_cached(tmp_path, "toy", True, "k1", images, labels)
    assert load_cached(tmp_path, "toy", True, "k1") is not None


def test_unwritable_cache_reports_false_and_leaves_nothing(tmp_path, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    assert store_cached(blocker, "toy", True, "k1", *_split()) is False
    full = tmp_path / "full"
    full.mkdir()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("rankwise.data.cache.np.save", disk_full)
    assert store_cached(full, "toy", True, "k1", *_split()) is False
    assert list(full.iterdir()) == []  # no partial file left behind
