"""Atomic files (umask-honouring), atomic directory swaps, stale temporaries, strict JSON."""

import json
import os
import subprocess
import sys

import pytest

import rankwise.io.atomic as atomic
from rankwise.errors import ConfigError
from rankwise.io.atomic import atomic_dir, atomic_write, json_text, remove_stale


def test_atomic_write_bytes_and_callable(tmp_path):
    p = tmp_path / "sub" / "f.bin"
    atomic_write(p, b"abc")
    assert p.read_bytes() == b"abc"
    atomic_write(p, lambda f: f.write(b"xyz"))
    assert p.read_bytes() == b"xyz"
    assert [x.name for x in p.parent.iterdir()] == ["f.bin"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "f.bin"
    atomic_write(p, b"old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.bin"]



@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_new_file_honours_umask_and_replaced_file_keeps_its_mode(tmp_path, umask_027):
    p = tmp_path / "f.json"
    atomic_write(p, b"{}")
    assert p.stat().st_mode & 0o777 == 0o640  # like open(): 0o666 & ~0o027 (mkstemp gives 0o600)
    os.chmod(p, 0o604)
    atomic_write(p, b"[]")
    assert p.stat().st_mode & 0o777 == 0o604


def test_atomic_dir_swaps_in_and_honours_umask(tmp_path, umask_027):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith("out.tmp-") and not out.exists()
        (tmp / "a.txt").write_text("one")
    assert out.stat().st_mode & 0o777 == 0o750
    with atomic_dir(out, replace_if=lambda p: (p / "a.txt").is_file()) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("exchange", [True, False])
def test_failed_block_keeps_the_old_dir_and_leaves_no_temp(tmp_path, monkeypatch, exchange):
    if not exchange:  # the two-rename fallback of systems without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "model.json").write_text("old")
    with pytest.raises(OSError), atomic_dir(out, replace_if=lambda p: True) as tmp:
        (tmp / "model.json").write_text("torn")
        raise OSError(28, "No space left on device")
    assert (out / "model.json").read_text() == "old"
    with atomic_dir(out, replace_if=lambda p: True) as tmp:
        (tmp / "model.json").write_text("new")
    assert (out / "model.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_refuses_files_and_foreign_dirs_and_keeps_named_entries(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="file"), atomic_dir(tmp_path / "file"):
        pass
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="non-empty"), atomic_dir(foreign):
        pass
    assert (foreign / "thesis.tex").read_text() == "precious"
    (foreign / "run").mkdir()
    (foreign / "run" / "checkpoint.pt").write_bytes(b"ck")
    with atomic_dir(foreign, replace_if=lambda p: True, keep=("run",)) as tmp:
        (tmp / "model.json").write_text("{}")
    assert (foreign / "run" / "checkpoint.pt").read_bytes() == b"ck"
    assert not (foreign / "thesis.tex").exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_remove_stale_cleans_dead_runs_only_and_rolls_back_a_half_swap(tmp_path):
    out = tmp_path / "out"
    dead = _dead_pid()
    stale = tmp_path / f"out.tmp-{dead}-0123abcd"
    live = tmp_path / f"out.tmp-{os.getpid()}-0123abcd"
    other = tmp_path / f"outer.tmp-{dead}-0123abcd"  # another output's temporary: not ours
    for d in (stale, live, other):
        d.mkdir()
    old = tmp_path / f"out.old-{dead}-89abcdef"  # killed between the two renames
    old.mkdir()
    (old / "model.json").write_text("old")
    removed = remove_stale(out)
    assert removed == [stale]
    assert (out / "model.json").read_text() == "old"
    assert live.is_dir() and other.is_dir() and not old.exists()


def test_json_text_writes_non_finite_floats_as_null():
    import numpy as np
    import torch

    obj = {"loss": float("nan"), "acc": float("inf"), "rows": [1.5, -float("inf")],
           "np": np.float32("nan"), "t": torch.tensor(float("nan")), "path": tmp_path_like()}
    text = json_text(obj)

    def refuse(token):
        raise AssertionError(f"invalid JSON token {token}")

    data = json.loads(text, parse_constant=refuse)
    assert data == {"loss": None, "acc": None, "rows": [1.5, None], "np": None, "t": None,
                    "path": "p"}


class tmp_path_like:  # noqa: N801 - a non-JSON object written through `default=str`
    def __str__(self) -> str:
        return "p"
