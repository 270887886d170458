import pytest

from rankwise.io.atomic import atomic_write


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
