"""Fault injection on the outputs of `rankwise compress` / `decompose` / `load`: a full disk (a
tiny tmpfs where mounting is permitted, else ENOSPC injected into every file write), a read-only
disk, SIGKILL in the middle of a write, tampered artifacts, NaN weights, the umask.

Writes are intercepted at `io.open` / `open` (what `Path.write_bytes`, `os.fdopen`, torch and
matplotlib all go through), so the same fault hits old and new code paths alike.
"""

from __future__ import annotations

import builtins
import errno
import io as pyio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rankwise import io
from rankwise.cli import main
from rankwise.compress.artifact import load_compressed
from rankwise.models import create_model

REPO = Path(__file__).resolve().parents[2]
COMPRESS = ["--dataset", "synthetic", "--limit-test", "16", "--device", "cpu", "--json"]


# ------------------------------------------------------------------------- fault injection


class _Budget:
    """Bytes that may still be written under `root` before the fault fires."""

    def __init__(self, root: Path, left: int, fault: str) -> None:
        self.root, self.left, self.fault = str(root), left, fault


class _LimitedFile:
    """A writable file whose writes draw from a `_Budget`: the write that exceeds it is torn
    (its first bytes land) and then fails with ENOSPC/EROFS, or the process is SIGKILLed."""

    def __init__(self, f, budget: _Budget, name: str) -> None:
        self._f, self._budget, self._name = f, budget, name

    def write(self, data):
        raw = data.encode() if isinstance(data, str) else bytes(memoryview(data).cast("B"))
        b = self._budget
        if len(raw) <= b.left:
            b.left -= len(raw)
            return self._f.write(data)
        if b.fault == "readonly":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), self._name)
        self._f.write(data[:b.left])
        self._f.flush()
        b.left = 0
        if b.fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._name)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def __iter__(self):
        return iter(self._f)


def install_fault(root: str | Path, left: int, fault: str = "enospc", match: str = ""):
    """Route `io.open`/`open` through `_LimitedFile` for files written under `root` whose name
    contains `match`; returns a function that undoes it. `fault`: "enospc", "readonly" or
    "kill"."""
    real = pyio.open
    budget = _Budget(Path(root), left, fault)

    def faulty_open(file, mode="r", *args, **kwargs):
        f = real(file, mode, *args, **kwargs)
        if not any(c in mode for c in "wax+"):
            return f
        name = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) \
            else os.path.abspath(file)
        hit = name.startswith(budget.root) and match in os.path.basename(name)
        return _LimitedFile(f, budget, name) if hit else f

    pyio.open = builtins.open = faulty_open

    def undo() -> None:
        pyio.open = builtins.open = real

    return undo


@pytest.fixture
def fault():
    undo: list = []

    def install(root, left, kind="enospc"):
        undo.append(install_fault(root, left, kind))

    yield install
    for u in undo:
        u()


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_line_error(rc: int, err: str, *words: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and rc == 2 and len(lines) == 1, (rc, err)
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def state(out: Path) -> dict[str, torch.Tensor]:
    return load_compressed(out).state_dict()


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name + "."))


# ------------------------------------------------------------------------------ full disk


def test_full_disk_during_compress_keeps_the_old_output(tmp_path, capsys, fault):
    out = tmp_path / "c"
    first = ["compress", "lenet5", *COMPRESS, "--quantize", "int8", "--entropy-code", "zstd",
             "--out", str(out)]
    assert run(first, capsys)[0] == 0
    before = state(out)
    fault(tmp_path, 20_000)  # the disk fills in the middle of the 59 KB blob
    rc, _, err = run(["compress", "lenet5", *COMPRESS, "--prune", "magnitude:0.5", "--quantize",
                      "int8", "--entropy-code", "zstd", "--out", str(out)], capsys)
    one_line_error(rc, err, "No space left on device", "free disk space")
    assert same(state(out), before)  # model.json still names a complete, matching artifact
    assert leftovers(out) == []


def test_full_disk_during_decompose_keeps_the_old_output(tmp_path, capsys, fault):
    out = tmp_path / "d"
    argv = ["decompose", "--model", "lenet5", "--rank", "ratio:0.5", "--out", str(out), "--json"]
    assert run(argv, capsys)[0] == 0
    before = io.load(out).state_dict()
    fault(tmp_path, 30_000)
    rc, _, err = run([*argv[:-4], "ratio:0.25", "--out", str(out), "--json"], capsys)
    one_line_error(rc, err, "No space left on device")
    assert same(io.load(out).state_dict(), before)
    assert json.loads((out / "model.json").read_text())["meta"]["rank"] == "ratio:0.5"


@pytest.fixture
def tiny_disk(tmp_path):
    """A 96 KiB tmpfs (root with mount rights only): room for one compressed lenet5, not two."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)],
                       check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot mount a tmpfs here (ENOSPC is simulated by the other tests)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=20)


def test_real_full_disk_keeps_the_old_output(tiny_disk, capsys):
    out = tiny_disk / "c"
    argv = ["compress", "lenet5", *COMPRESS, "--quantize", "int8", "--entropy-code", "zstd",
            "--out", str(out)]
    assert run(argv, capsys)[0] == 0
    before = state(out)
    rc, _, err = run([*argv[:-2], "--prune", "magnitude:0.3", "--out", str(out)], capsys)
    one_line_error(rc, err, "No space left on device")
    assert same(state(out), before)
    assert leftovers(out) == []


def test_read_only_disk_is_one_line(tmp_path, capsys, fault):
    fault(tmp_path, 0, "readonly")
    rc, _, err = run(["compress", "lenet5", *COMPRESS, "--quantize", "int8",
                      "--out", str(tmp_path / "c")], capsys)
    one_line_error(rc, err, "Read-only file system")
    assert leftovers(tmp_path / "c") == [] and not (tmp_path / "c").exists()


# --------------------------------------------------------------------------- kill in a write


@pytest.mark.slow
def test_kill_during_write_keeps_the_old_output_and_the_next_run_cleans_up(tmp_path, capsys):
    out = tmp_path / "c"
    argv = ["compress", "lenet5", *COMPRESS, "--quantize", "int8", "--out", str(out)]
    assert run(argv, capsys)[0] == 0
    before = state(out)
    second = [*argv[:-2], "--prune", "magnitude:0.5", "--out", str(out)]
    code = f"""
        from tests.faults.test_output_faults import install_fault
        from rankwise.cli import main
        # SIGKILL 30 KB into the int8 weights file
        install_fault({str(tmp_path)!r}, 30_000, "kill", match="int8")
        main({second!r})
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert same(state(out), before)
    assert run(second, capsys)[0] == 0  # the next run removes the dead run's temporary
    assert leftovers(out) == []
    assert not same(state(out), before)


# ------------------------------------------------------------------------ tampered, NaN, mode


def test_tampered_int8_file_fails_load_in_one_line(tmp_path, capsys):
    out = tmp_path / "c"
    assert run(["compress", "lenet5", *COMPRESS, "--quantize", "int8", "--out", str(out)],
               capsys)[0] == 0
    f = out / "model.int8.safetensors"
    data = bytearray(f.read_bytes())
    data[-7] ^= 0x01  # one int8 weight off by one: loads silently without a checksum
    f.write_bytes(bytes(data))
    one_line_error(*run(["load", str(out), "--json"], capsys)[::2], "checksum")


def test_nan_weights_are_refused_naming_the_layer(tmp_path, capsys):
    model = create_model("lenet5")
    with torch.no_grad():
        model.get_parameter("features.3.weight")[0, 0, 0, 0] = float("nan")
    io.save(model, tmp_path / "m", arch="lenet5", input_shape=(1, 28, 28))
    rc, _, err = run(["compress", str(tmp_path / "m"), *COMPRESS, "--quantize", "int8",
                      "--entropy-code", "zstd", "--out", str(tmp_path / "c")], capsys)
    line = one_line_error(rc, err, "features.3.weight", "NaN")
    assert "bug" not in line
    assert not (tmp_path / "c").exists()


def test_outputs_honour_the_umask(tmp_path, capsys):
    old = os.umask(0o027)
    try:
        out = tmp_path / "c"
        assert run(["compress", "lenet5", *COMPRESS, "--quantize", "int8", "--out", str(out)],
                   capsys)[0] == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o750
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == dict.fromkeys(["model.json", "model.int8.safetensors", "report.json",
                                   "report.md"], 0o640)
