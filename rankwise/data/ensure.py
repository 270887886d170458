"""Find a dataset's files or fetch them: the download rule shared by `load_dataset` and
`require_dataset`.

`download`:
- None (default, "auto"): a dataset missing from every default search place is downloaded into
  the first writable of `$RANKWISE_DATA`, `~/.cache/rankwise`. An explicit `data_dir` is only
  read, never filled on its own: a typo in a path should fail, not start a download there.
- True: download when missing, into `data_dir` if given (created if needed), else as above.
- False: never download (what CLI `--offline` passes).
`$RANKWISE_OFFLINE=1` forbids every download, whatever `download` says.
"""

from __future__ import annotations

import os
from pathlib import Path

from rankwise.data import download as _download
from rankwise.data.search import (
    OFFLINE_ENV,
    data_dir_problem,
    download_root,
    find_split_files,
    missing_error,
    offline_from_env,
)
from rankwise.data.sources import DatasetSpec, canonical_name, get_spec
from rankwise.errors import DatasetNotFoundError


def _why_no_download(download: bool | None, explicit_dir: bool) -> str | None:
    """Why the rule above forbids a download here, or None if it allows one."""
    if offline_from_env():
        extra = " (download=True is overridden)" if download else ""
        return f"downloads are off (${OFFLINE_ENV}={os.environ[OFFLINE_ENV]}){extra}"
    if download is False:
        return "downloads are off (download=False, CLI --offline)"
    if download is None and explicit_dir:
        return "an explicit data_dir is filled only with download=True (CLI --download)"
    return None


def ensure_split(spec: DatasetSpec, train: bool, data_dir: str | os.PathLike | None = None,
                 download: bool | None = None) -> list[Path]:
    """Paths of the files of one split, downloading them first if the rule allows it.

    Raises DatasetNotFoundError (one message: reason and fix, expected files, every place looked
    at, every URL tried) or DatasetIntegrityError (every download had the wrong md5).
    """
    explicit = data_dir is not None
    files, looked = find_split_files(spec, train, data_dir)
    if files is not None:
        return files
    why_not = _why_no_download(download, explicit)
    offline = download is False or offline_from_env()
    if explicit:
        path = Path(data_dir).expanduser()
        problem = data_dir_problem(path) or f"data_dir {path} does not hold them"
        if path.exists() and not path.is_dir():  # a file: nothing can be read or saved there
            raise missing_error(spec, train, looked, problem, data_dir)
        if why_not is not None:
            raise missing_error(spec, train, looked, f"{problem}; {why_not}", data_dir,
                                offline=offline)
    elif why_not is not None:
        raise missing_error(spec, train, looked, why_not, data_dir, offline=offline)
    tried: list[str] = []
    try:
        _download.download(spec, download_root(data_dir), train, tried)
    except DatasetNotFoundError as e:
        reason = "every download URL failed" if tried else str(e)
        raise missing_error(spec, train, looked, reason, data_dir, tried) from None
    files, looked = find_split_files(spec, train, data_dir)
    if files is None:  # e.g. an archive whose folder lacks a file of the split
        raise missing_error(spec, train, looked, "the downloaded files do not hold this split",
                            data_dir, tried)
    return files


def require_dataset(name: str, data_dir: str | os.PathLike | None = None,
                    download: bool | None = None) -> Path | None:
    """Make sure both splits of `name` are on disk (finding or fetching them; no decoding).

    Cheap (file look-ups only; md5s are checked when a split is loaded), so a benchmark suite
    can call it before its first cell and fail at once with the one clear error.
    Returns the folder holding the train split's files; None for `synthetic`, which needs none.
    Raises DatasetNotFoundError or DatasetIntegrityError as `ensure_split`.
    """
    name = canonical_name(name)
    if name == "synthetic":
        return None
    spec = get_spec(name)
    train_files = ensure_split(spec, True, data_dir, download)
    ensure_split(spec, False, data_dir, download)
    return train_files[0].parent
