"""Download of the official files: mirrors in order, md5 check, atomic temp-file + rename.

`_fetch(url, dest)` is the only function that touches the network; tests replace it. A rich
progress bar is drawn on stderr when it is a terminal; otherwise downloads are silent.
"""

from __future__ import annotations

import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from rankwise.data.sources import Archive, DatasetSpec, md5_file
from rankwise.errors import DatasetIntegrityError, DatasetNotFoundError

TIMEOUT_S = 30.0  # per socket operation (connect, each read), not for the whole file
_USER_AGENT = "rankwise-dataset-download"
_NETWORK_ERRORS = (OSError, http.client.HTTPException, ValueError)  # URLError is an OSError


def _fetch(url: str, dest: Path, timeout: float = TIMEOUT_S, progress: bool | None = None
           ) -> None:
    """Stream `url` into the file `dest` (which exists and is empty).

    `progress`: draw a progress bar (bytes, MB/s) on stderr; None: only if stderr is a terminal.
    """
    if progress is None:
        progress = sys.stderr.isatty()
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as f:
        if not progress:
            shutil.copyfileobj(response, f, length=1 << 20)
            return
        from rich.console import Console
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

        length = response.headers.get("Content-Length") if response.headers else None
        total = int(length) if length and length.isdigit() else None
        columns = (*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task(url.rsplit("/", 1)[-1], total=total)
            while block := response.read(1 << 16):
                f.write(block)
                bar.advance(task, len(block))


def _fetch_verified(archive: Archive, directory: Path, tried: list[str] | None = None) -> Path:
    """Download `archive` into `directory` under a temp name; return it once its md5 matches.

    Tries each URL in order; each failure is appended to `tried` as "url: why". The temp file
    is removed on every failure, interruption included. DatasetIntegrityError if every copy
    had the wrong md5, DatasetNotFoundError if no URL gave a good copy.
    """
    errors: list[str] = []
    bad_md5 = False
    for url in archive.urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{archive.filename}.", suffix=".part",
                                        dir=directory)
        os.close(fd)
        tmp = Path(tmp_name)
        keep = False
        try:
            _fetch(url, tmp)
            got = md5_file(tmp)
            keep = got == archive.md5
        except _NETWORK_ERRORS as e:
            errors.append(f"{url}: {e}")
            continue
        finally:
            if not keep:
                tmp.unlink(missing_ok=True)
        if keep:
            return tmp
        bad_md5 = True
        errors.append(f"{url}: md5 {got}, expected {archive.md5}")
    if tried is not None:
        tried.extend(errors)
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


def download(spec: DatasetSpec, root: Path, train: bool | None = None,
             tried: list[str] | None = None) -> None:
    """Fetch the files of `spec` into `root` (tar archives unpacked to `root/<extract_to>`).

    `train`: only the plain files of that split (None: all); archives hold both splits.
    `tried`: if given, every failed URL is appended to it as "url: why".
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
            tmp = _fetch_verified(archive, root, tried)
            staging = Path(tempfile.mkdtemp(prefix=".extract.", dir=root))
            try:
                _safe_extract(tmp, staging)
                extracted = staging / archive.extract_to
                if not extracted.is_dir():
                    raise DatasetIntegrityError(
                        f"{archive.filename}: archive has no {archive.extract_to}/ folder")
                try:
                    os.replace(extracted, final)
                except OSError:
                    if not final.is_dir():  # else another process unpacked it meanwhile
                        raise
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
            tmp = _fetch_verified(archive, directory, tried)
            os.replace(tmp, final)
