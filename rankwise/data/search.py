"""Where a dataset's files are looked for, where a download goes, and the error when both fail.

Search order without `data_dir` (first directory holding every file of the split wins), each
place tried as is and with the dataset's usual subfolders (`cifar-10-batches-py`,
`FashionMNIST/raw`, ...): every entry of `$RANKWISE_DATA` (an `os.pathsep` list),
`/usr/share/datasets/<name>` (Debian's `dataset-fashion-mnist` puts the four `.gz` files there),
`../shared/data` relative to the working directory, `~/.cache/rankwise`.

An explicit `data_dir` is the only place looked at (it and its usual subfolders): no other copy
is ever used instead of it, and a missing folder or a file in its place is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

from rankwise.data.sources import DatasetSpec
from rankwise.errors import ConfigError, DatasetNotFoundError

CACHE_ROOT = Path("~/.cache/rankwise")
DEBIAN_ROOT = Path("/usr/share/datasets")  # + /<name>
OFFLINE_ENV = "RANKWISE_OFFLINE"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def offline_from_env() -> bool:
    """True if `$RANKWISE_OFFLINE` forbids downloads (1/true/yes/on; unset or 0/false/no/off
    allows them); ConfigError for any other value."""
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"${OFFLINE_ENV}={os.environ[OFFLINE_ENV]!r} is not a yes/no value; set it "
                      f"to 1 to forbid downloads or 0 (or unset it) to allow them")


def env_roots() -> list[Path]:
    """The folders listed in `$RANKWISE_DATA`, in order."""
    env = os.environ.get("RANKWISE_DATA", "")
    return [Path(p).expanduser() for p in env.split(os.pathsep) if p]


def cache_root() -> Path:
    """`~/.cache/rankwise` (downloads when `$RANKWISE_DATA` is unset; decoded splits)."""
    return CACHE_ROOT.expanduser()


def search_roots(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The search places, in order (before subfolders are appended); only `data_dir` if given."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    roots = [*env_roots(), DEBIAN_ROOT / name, Path.cwd().parent / "shared" / "data",
             cache_root()]
    unique: list[Path] = []
    for root in roots:
        if root not in unique:
            unique.append(root)
    return unique


def candidate_dirs(spec: DatasetSpec, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every directory that may hold the files: each search root, then root/<subfolder>."""
    out: list[Path] = []
    for root in search_roots(spec.name, data_dir):
        for d in (root, *(root / s for s in spec.subdirs)):
            if d not in out:
                out.append(d)
    return out


def resolve_file(directory: Path, filename: str, kind: str) -> Path | None:
    """`directory/filename`, or for IDX files `filename.gz` (preferred when both exist)."""
    if kind == "idx":
        gz = directory / (filename + ".gz")
        if gz.is_file():
            return gz
    path = directory / filename
    return path if path.is_file() else None


def find_split_files(spec: DatasetSpec, train: bool,
                     data_dir: str | os.PathLike | None = None
                     ) -> tuple[list[Path] | None, list[Path]]:
    """(paths of the split's files in the first complete directory or None, dirs looked at)."""
    looked: list[Path] = []
    for d in candidate_dirs(spec, data_dir):
        looked.append(d)
        paths = [resolve_file(d, f, spec.kind) for f in spec.files[train]]
        if all(p is not None for p in paths):
            return [p for p in paths if p is not None], looked
    return None, looked


def download_root(data_dir: str | os.PathLike | None = None) -> Path:
    """Where a download goes: `data_dir` if given, else the first folder of `$RANKWISE_DATA`,
    `~/.cache/rankwise` that exists or can be created and is writable.

    DatasetNotFoundError naming every candidate if none is usable.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    candidates = [*env_roots(), cache_root()]
    for root in candidates:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if root.is_dir() and os.access(root, os.W_OK | os.X_OK):
            return root
    raise DatasetNotFoundError(
        "no writable folder to download datasets into; tried " +
        ", ".join(str(r) for r in candidates) + "; set $RANKWISE_DATA to a writable folder or "
        "pass data_dir= (CLI --data-dir) with download=True (CLI --download)")


def data_dir_problem(data_dir: str | os.PathLike) -> str | None:
    """Why an explicit `data_dir` cannot hold a dataset (missing, not a folder), or None."""
    path = Path(data_dir).expanduser()
    if path.is_dir():
        return None
    if path.exists():
        return f"data_dir {path} is a file, not a folder"
    return f"data_dir {path} does not exist"


def missing_error(spec: DatasetSpec, train: bool, looked: list[Path], reason: str,
                  data_dir: str | os.PathLike | None = None, tried: list[str] | None = None,
                  offline: bool = False) -> DatasetNotFoundError:
    """The one error of a dataset that is neither on disk nor downloadable.

    First line: what is missing, why (`reason`), and the fixes; then the expected files, every
    directory looked at, and every URL tried with its failure. `offline`: downloads were
    forbidden (download=False or $RANKWISE_OFFLINE).
    """
    split = "train" if train else "test"
    fixes: list[str] = []
    if tried:
        fixes.append("connect to the network (or set HTTPS_PROXY) and run again")
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if path.exists() and not path.is_dir():
            fixes.append("point data_dir= (CLI --data-dir) at a folder")
        elif not tried and not offline:
            fixes.append(f"check the path, or pass download=True (CLI --download) to fetch the "
                         f"files into {path}")
        else:
            fixes.append("check the path")
        fixes.append("leave out data_dir= (--data-dir) to use the default search places")
    else:
        fixes.append("point data_dir= (CLI --data-dir) or $RANKWISE_DATA at a folder holding the "
                     "files")
        if offline:
            fixes.append(f"allow downloads (unset ${OFFLINE_ENV}, drop --offline)")
    if spec.name == "fashion-mnist":
        fixes.append("on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist")
    suffix = "[.gz]" if spec.kind == "idx" else ""
    expected = ", ".join(f + suffix for f in spec.files[train])
    lines = [f"{spec.name} {split} split not found: {reason}. Fix: {'; or '.join(fixes)}.",
             f"expected files: {expected} (in one folder or its subfolders "
             f"{', '.join(spec.subdirs)})",
             "looked in:", *(f"  {d}" for d in looked)]
    if tried:
        lines += ["download URLs tried:", *(f"  {t}" for t in tried)]
    return DatasetNotFoundError("\n".join(lines))
