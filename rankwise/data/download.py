"""Download of the official files: mirrors in order, md5 check, atomic temp-file + rename.

`_fetch(url, dest)` is the only function that touches the network; tests replace it.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from rankwise.data.sources import Archive, DatasetSpec, md5_file
from rankwise.errors import DatasetIntegrityError, DatasetNotFoundError


def _fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Stream `url` into the file `dest` (which exists and is empty)."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f, length=1 << 20)


def _fetch_verified(archive: Archive, directory: Path) -> Path:
    """Download `archive` into `directory` under a temp name; return it once its md5 matches.

    Tries each mirror; DatasetIntegrityError if every copy had the wrong md5,
    DatasetNotFoundError if no mirror answered.
    """
    errors: list[str] = []
    bad_md5 = False
    for url in archive.urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{archive.filename}.", suffix=".part",
                                        dir=directory)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _fetch(url, tmp)
            got = md5_file(tmp)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            tmp.unlink(missing_ok=True)
            errors.append(f"{url}: {e}")
            continue
        if got == archive.md5:
            return tmp
        tmp.unlink(missing_ok=True)
        bad_md5 = True
        errors.append(f"{url}: md5 {got}, expected {archive.md5}")
    detail = "\n  ".join(errors)
    if bad_md5:
        raise DatasetIntegrityError(
            f"download of {archive.filename} failed its checksum:\n  {detail}\nnothing was "
            f"saved; retry later or fetch the file by hand and pass data_dir=")
    raise DatasetNotFoundError(
        f"cannot download {archive.filename}:\n  {detail}\ncheck the network, or fetch the file "
        f"by hand and pass data_dir= (CLI --data-dir)")


def _safe_extract(tar_path: Path, into: Path) -> None:
    """Extract a tar.gz refusing absolute paths, `..`, links and special files."""
    with tarfile.open(tar_path, "r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            parts = Path(m.name).parts
            if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
                raise DatasetIntegrityError(
                    f"{tar_path}: unsafe archive member {m.name!r}; refusing to extract")
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
            tar.extractall(into, members=members, filter="data")
        else:  # pragma: no cover - members were checked above
            tar.extractall(into, members=members)


def download(spec: DatasetSpec, root: Path, train: bool | None = None) -> None:
    """Fetch the files of `spec` into `root` (tar archives unpacked to `root/<extract_to>`).

    `train`: only the plain files of that split (None: all); archives hold both splits.
    Files already present are kept. Each file appears under its final name only after its md5
    matched (and, for archives, after complete extraction), so an interrupted download leaves
    no half-written dataset behind.
    """
    root.mkdir(parents=True, exist_ok=True)
    for archive in spec.archives:
        if archive.extract_to:
            final = root / archive.extract_to
            if final.is_dir():
                continue
            tmp = _fetch_verified(archive, root)
            staging = Path(tempfile.mkdtemp(prefix=".extract.", dir=root))
            try:
                _safe_extract(tmp, staging)
                extracted = staging / archive.extract_to
                if not extracted.is_dir():
                    raise DatasetIntegrityError(
                        f"{archive.filename}: archive has no {archive.extract_to}/ folder")
                os.replace(extracted, final)
            finally:
                tmp.unlink(missing_ok=True)
                shutil.rmtree(staging, ignore_errors=True)
        else:
            if train is not None and archive.filename.removesuffix(".gz") not in \
                    spec.files[train]:
                continue
            directory = root / archive.subdir
            directory.mkdir(parents=True, exist_ok=True)
            final = directory / archive.filename
            if final.is_file():
                continue
            tmp = _fetch_verified(archive, directory)
            os.replace(tmp, final)
