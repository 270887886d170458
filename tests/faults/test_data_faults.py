"""Regressions of the data and fresh-machine defects: each test failed on the code before the fix.

- a missing dataset was not fetched on first use, and Fashion-MNIST had no mirror;
- `RANKWISE_OFFLINE=1` was ignored;
- an explicit data_dir that was missing, a file or empty silently fell back to another copy;
- when every URL failed, the error named the URLs but not the places searched;
- an interrupted download left its partial file behind;
- the README's test command and `.ci/run` differed; the main job needed a manual step to get
  Fashion-MNIST; a document about how the repo was built stood in for CONTRIBUTING.md.

The network is faked by replacing the URL opener; nothing here opens a real connection.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import struct
import subprocess
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from rankwise.data import download, load_dataset, sources
from rankwise.errors import DatasetNotFoundError

REPO = Path(__file__).resolve().parents[2]
FASHION_S3 = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


def _idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return gzip.compress(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _fashion_test_split(n: int = 5) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {"t10k-images-idx3-ubyte.gz": _idx_gz(rng.integers(0, 256, (n, 28, 28))),
            "t10k-labels-idx1-ubyte.gz": _idx_gz(rng.integers(0, 10, n))}


class _Response(io.BytesIO):
    headers: dict[str, str] = {}

    def __enter__(self):  # noqa: ANN204
        return self


class _Web:
    """A fake `urlopen`: serves bytes by URL, URLError for anything else; records requests."""

    def __init__(self, pages: dict[str, bytes]) -> None:
        self.pages = pages
        self.opened: list[str] = []

    def __call__(self, request, timeout: float):  # noqa: ANN001, ANN204
        url = getattr(request, "full_url", request)
        self.opened.append(url)
        if url not in self.pages:
            raise urllib.error.URLError(f"no route to {url}")
        return _Response(self.pages[url])


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME, cwd and Debian's location under tmp_path; no $RANKWISE_DATA / $RANKWISE_OFFLINE;
    the network replaced by an empty `_Web` (installed as `env.web` through `serve`)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("RANKWISE_DATA", "RANKWISE_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "work" / "main").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work" / "main")
    from rankwise.data import search
    monkeypatch.setattr(search, "DEBIAN_ROOT", tmp_path / "usr-share-datasets")
    monkeypatch.setattr(download.urllib.request, "urlopen", _Web({}))
    return tmp_path


def _serve(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes], base: str) -> _Web:
    """Serve `files` at `base` + name, with the fashion-mnist md5s set to theirs."""
    spec = sources.SPECS["fashion-mnist"]
    md5 = {name: hashlib.md5(data).hexdigest() for name, data in files.items()}
    archives = tuple(sources.Archive(a.filename, md5.get(a.filename, a.md5), a.urls, a.subdir,
                                     a.extract_to) for a in spec.archives)
    monkeypatch.setitem(sources.SPECS, "fashion-mnist", sources.DatasetSpec(
        spec.name, spec.kind, spec.files, spec.subdirs, spec.md5, archives))
    web = _Web({base + name: data for name, data in files.items()})
    monkeypatch.setattr(download.urllib.request, "urlopen", web)
    return web


def test_missing_dataset_is_downloaded_on_first_use(env: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    web = _serve(monkeypatch, _fashion_test_split(), FASHION_S3)
    ds = load_dataset("fashion-mnist", train=False, verify="structure")
    assert len(ds) == 5 and ds.images.shape == (5, 1, 28, 28)
    assert web.opened == [FASHION_S3 + "t10k-images-idx3-ubyte.gz",
                          FASHION_S3 + "t10k-labels-idx1-ubyte.gz"]
    assert (env / "home" / ".cache" / "rankwise" / "fashion-mnist" /
            "t10k-images-idx3-ubyte.gz").is_file()


def test_fashion_mnist_mirror_is_used_when_s3_fails(env: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = sources.SPECS["fashion-mnist"].archives[0].urls[1].rsplit("/", 1)[0] + "/"
    assert mirror != FASHION_S3
    web = _serve(monkeypatch, _fashion_test_split(), mirror)
    assert len(load_dataset("fashion-mnist", train=False, verify="structure")) == 5
    assert web.opened[0].startswith(FASHION_S3) and web.opened[1].startswith(mirror)


def test_offline_env_refuses_to_download(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    web = _serve(monkeypatch, _fashion_test_split(), FASHION_S3)
    monkeypatch.setenv("RANKWISE_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", train=False, download=True)
    first = str(err.value).splitlines()[0]
    assert "RANKWISE_OFFLINE=1" in first and "apt-get install dataset-fashion-mnist" in first
    assert web.opened == []


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_explicit_data_dir_never_falls_back(env: Path, kind: str) -> None:
    for copy in (env / "home" / ".cache" / "rankwise" / "fashion-mnist",
                 env / "work" / "shared" / "data" / "fashion-mnist"):  # two good copies
        copy.mkdir(parents=True)
        for name, data in _fashion_test_split().items():
            (copy / name).write_bytes(data)
    given = env / "given"
    if kind == "file":
        given.write_text("not a folder")
    elif kind == "empty":
        given.mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", train=False, data_dir=given, verify="structure")
    msg = str(err.value)
    assert f"data_dir {given}" in msg.splitlines()[0]
    assert "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert str(env / "home") not in msg and str(env / "work") not in msg


def test_every_url_failing_gives_one_error_with_places_urls_and_fix(env: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", train=True)
    msg = str(err.value)
    assert "network" in msg.splitlines()[0] and "--data-dir" in msg.splitlines()[0]
    assert f"  {env / 'usr-share-datasets' / 'fashion-mnist'}\n" in msg
    assert f"  {env / 'home' / '.cache' / 'rankwise'}\n" in msg
    assert f"  {FASHION_S3}train-images-idx3-ubyte.gz: " in msg
    assert "raw.githubusercontent.com/zalandoresearch" in msg


def test_interrupted_download_leaves_no_partial_file(env: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    class Dying(_Response):
        def read(self, size: int = -1) -> bytes:
            if self.tell() > 0:
                raise KeyboardInterrupt
            return super().read(10)

    monkeypatch.setattr(download.urllib.request, "urlopen",
                        lambda request, timeout: Dying(b"x" * 100))
    with pytest.raises(KeyboardInterrupt):
        load_dataset("fashion-mnist", train=False, download=True)
    cache = env / "home" / ".cache" / "rankwise"
    assert [p.name for p in cache.rglob("*") if p.is_file()] == []


def _setup_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    blocks = _setup_blocks()
    assert len(blocks) == 2, "the set-up is two commands: the main job and the tests"
    test_command = blocks[1].strip()
    assert "\n" not in test_command and "pytest" in test_command
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    commands = [line for line in ci if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] == test_command
    assert not any(re.match(r"\s*(export\s|[A-Z_]+=)", line) for line in commands)


def _fake_tools(bin_dir: Path, log: Path, uid: int, apt: bool) -> None:
    bin_dir.mkdir()
    tools = {"pip": "", "rankwise": "", "id": f"echo {uid}", "sudo": '"$@"'}
    if apt:
        tools["apt-get"] = ""
    for name, body in tools.items():
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n{body}\n')
        path.chmod(0o755)
    os.symlink("/bin/sh", bin_dir / "sh")


@pytest.mark.skipif(not Path("/bin/bash").is_file(), reason="needs bash")
@pytest.mark.parametrize(("uid", "apt"), [(0, True), (1000, True), (0, False)])
def test_readme_main_job_installs_debian_dataset_first(tmp_path: Path, uid: int,
                                                       apt: bool) -> None:
    """The README's main-job command, run with stand-ins for apt-get, sudo, pip and rankwise."""
    main_job = _setup_blocks()[0]
    log = tmp_path / "log"
    _fake_tools(tmp_path / "bin", log, uid, apt)
    subprocess.run(["/bin/bash", "-c", main_job], check=True, capture_output=True,
                   env={"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path)}, timeout=30)
    calls = log.read_text().splitlines()
    tail = ["pip install torch==2.13.0", "pip install -e .", "rankwise bench quick"]
    assert [c for c in calls if not c.startswith(("apt-get", "sudo", "id"))] == tail
    installed = Path("/usr/share/datasets/fashion-mnist").is_dir()
    apt_calls = [c for c in calls if c.startswith("apt-get")]
    if apt and not installed:
        assert apt_calls[-1].startswith("apt-get install") and "dataset-fashion-mnist" in \
            apt_calls[-1] and "-y" in apt_calls[-1].split()
        assert calls.index(apt_calls[-1]) < calls.index(tail[0])
        assert any(c.startswith("sudo") for c in calls) == (uid != 0)
    else:
        assert apt_calls == []


def test_contributing_replaces_the_build_notes() -> None:
    assert not (REPO / "docs" / "helper-rules.md").exists()
    text = (REPO / "CONTRIBUTING.md").read_text()
    for needed in ("pytest", "ruff", "linalg → layers", "tests/", "BENCHMARKS.md"):
        assert needed in text
    assert "/work" not in text and "helper" not in text.lower()
