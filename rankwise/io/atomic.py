"""Crash-safe output: atomic files, atomic directory swaps and strict JSON text.

- `atomic_write(path, bytes_or_writer)`: temp file beside `path`, fsync, `os.replace`; the file
  gets the mode a plain `open()` would give (0o666 & ~umask, or the mode of the file replaced).
- `atomic_dir(out)`: a context manager yielding a fresh `OUT.tmp-<pid>-<token>` folder beside
  `out`; on success its files are fsynced and it is swapped in for `out` (an atomic exchange where
  the OS has one, else two renames); on error it is removed and `out` is untouched. Temporaries of
  crashed runs (their process is gone) are removed on the next call, an interrupted swap is rolled
  back to the old `out`.
- `json_text(obj)`: JSON with every NaN/±Inf float written as `null`, so output stays valid JSON.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import math
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from rankwise.errors import ConfigError


def current_umask() -> int:
    """The process umask, read from /proc/self/status where available, else set and restored
    at once (`os.umask` has no read-only form)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """0o666 & ~umask: the mode `open(path, "w")` gives a new file."""
    return 0o666 & ~current_umask()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object] | bytes) -> Path:
    """Write `path` atomically: a temp file in the same folder, fsync, then `os.replace`.

    `write` is the bytes to write or a function writing into the open binary file. A crash or
    an exception leaves either the old file or the new one, never a torn file, and no temp file.
    The new file keeps the replaced file's mode, else gets 0o666 & ~umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = default_file_mode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, (bytes, bytearray, memoryview)):
                f.write(write)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


# ----------------------------------------------------------------------------------- JSON


def finite_json(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, ±Inf) replaced by None, recursively through
    dicts, lists and tuples (tuples become lists); other values unchanged."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = 2, default: Callable[[Any], Any] | None = str,
              **kw: Any) -> str:
    """Strict JSON text of `obj`: NaN/±Inf become `null` (never the invalid `NaN` token).
    numpy/torch scalars are written as their Python value; other objects JSON cannot hold go
    through `default` (str; None raises TypeError)."""
    def fallback(o: Any) -> Any:
        item = getattr(o, "item", None)
        if callable(item) and getattr(o, "ndim", None) == 0:
            return finite_json(item())
        if default is None:
            raise TypeError(f"{type(o).__name__} is not JSON serializable")
        return finite_json(default(o))

    return json.dumps(finite_json(obj), indent=indent, default=fallback, allow_nan=False, **kw)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, **kw: Any) -> Path:
    """`atomic_write(path, json_text(obj, **kw))` (utf-8, trailing newline)."""
    return atomic_write(path, (json_text(obj, **kw) + "\n").encode("utf-8"))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """`atomic_write(path, text)` in utf-8."""
    return atomic_write(path, text.encode("utf-8"))


# ------------------------------------------------------------------------ directory swaps

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the paths `a` and `b` (Linux renameat2 RENAME_EXCHANGE); False where the
    OS or filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _pattern(out: Path) -> re.Pattern[str]:
    return re.compile(re.escape(out.name) + r"\.(tmp|old)-(\d+)-[0-9a-f]{8}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(out: str | os.PathLike[str]) -> list[Path]:
    """Clean up after crashed `atomic_dir` runs on `out`: if `out` is missing but a finished
    old copy `OUT.old-*` survives an interrupted swap, it is renamed back; every other
    `OUT.tmp-*` / `OUT.old-*` folder whose process is gone is removed. Folders of live
    processes, symlinks and anything not matching the exact name pattern are left alone.
    Returns the removed paths."""
    out = Path(out)
    pat = _pattern(out)
    removed: list[Path] = []
    try:
        siblings = sorted(out.parent.iterdir())
    except OSError:
        return removed
    for p in siblings:
        m = pat.fullmatch(p.name)
        if not m or p.is_symlink() or not p.is_dir() or _alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not out.exists() and not out.is_symlink():
            os.rename(p, out)  # roll an interrupted two-rename swap back to the old output
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.is_symlink():
                continue
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _link_or_copy(src: Path, dst: Path) -> None:
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_file)
    else:
        _link_file(src, dst)


def _link_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def check_out_dir(out: str | os.PathLike[str], flag: str = "--out") -> Path:
    """`out` as a Path; `ConfigError` if it names an existing file (not a directory)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out} is an existing file, not a directory; pass a directory "
                          "path (it is created if missing)")
    return out


def check_replaceable(out: str | os.PathLike[str],
                      replace_if: Callable[[Path], bool] | None = None,
                      flag: str = "--out") -> Path:
    """`out` as a Path if `atomic_dir(out, replace_if)` may write it: missing, empty, or
    `replace_if(out)` is True; else `ConfigError` (also when `out` is a file)."""
    out = check_out_dir(out, flag)
    if out.is_dir() and any(out.iterdir()) and not (replace_if is not None and replace_if(out)):
        raise ConfigError(f"{flag} {out} is a non-empty directory that is not an earlier output "
                          "of this command; pass a new or empty directory (it is not "
                          "overwritten to protect its files)")
    return out


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike[str], replace_if: Callable[[Path], bool] | None = None,
               keep: Iterable[str] = (), flag: str = "--out") -> Iterator[Path]:
    """Build a directory beside `out` and swap it in for `out` when the block succeeds.

    Yields the temporary folder `OUT.tmp-<pid>-<token>` (same filesystem as `out`, mode 0o777 &
    ~umask). The old `out` survives, complete, until the new one is complete and fsynced.
    `replace_if(out) -> bool` says whether an existing non-empty `out` may be replaced (e.g. it
    holds an earlier output of the same command); without it, or when it returns False, a
    non-empty `out` is refused with `ConfigError` (empty folders are always replaced).
    `keep`: names inside an existing `out` carried into the new one (hard links, else copies),
    e.g. a fine-tuning run directory. `flag` names the option in error messages.
    """
    out = Path(os.path.realpath(check_out_dir(out, flag)))  # swap the real folder, never "."
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    check_replaceable(out, replace_if, flag)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = out.parent / f"{out.name}.tmp-{token}"
    tmp.mkdir(mode=0o700)
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # what a plain mkdir would give
        yield tmp
        if out.is_dir():
            for name in keep:
                src = out / name
                if (src.exists() or src.is_symlink()) and not (tmp / name).exists():
                    _link_or_copy(src, tmp / name)
        _fsync_tree(tmp)
        _swap(tmp, out, token)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap(tmp: Path, out: Path, token: str) -> None:
    if not out.exists():
        os.rename(tmp, out)
    elif _exchange(tmp, out):
        shutil.rmtree(tmp)  # now holds the old output
    else:
        old = out.parent / f"{out.name}.old-{token}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(out.parent)
