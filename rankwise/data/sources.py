"""What each dataset looks like on disk and where it is published: file names, md5s, URLs.

Where the files are searched for is `rankwise.data.search`; fetching them is
`rankwise.data.download`. Every archive lists its official URL first and one mirror after it
(MNIST: the PyTorch S3 mirror first, because LeCun's site often refuses scripted downloads);
every download is checked against the official md5 whichever URL served it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from rankwise.errors import DatasetIntegrityError, DatasetNotFoundError

_IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class Archive:
    """One downloadable file: mirror URLs tried in order, its md5, and where it is saved/extracted.

    `extract_to`: for a tar.gz, the folder name it unpacks to (relative to the download root);
    empty for a plain file saved as `<root>/<subdir>/<filename>`.
    """

    filename: str
    md5: str
    urls: tuple[str, ...]
    subdir: str = ""
    extract_to: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset looks like on disk.

    `files[train]`: file names of a split (IDX names without `.gz`; either form is accepted);
    `md5`: accepted md5s per on-disk file name (official + known repackagings);
    `subdirs`: usual subfolders tried under each search location; `archives`: download recipe.
    """

    name: str
    kind: str  # "idx" or "cifar"
    files: dict[bool, tuple[str, ...]]
    subdirs: tuple[str, ...]
    md5: dict[str, tuple[str, ...]] = field(default_factory=dict)
    archives: tuple[Archive, ...] = ()


_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                  "http://yann.lecun.com/exdb/mnist/")
_MNIST_MD5 = {  # the official gzipped files (LeCun's site and its S3 mirror)
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/"
                    "data/fashion/")
_CIFAR_MIRRORS = ("https://www.cs.toronto.edu/~kriz/", "https://dataset.bj.bcebos.com/cifar/")
_FASHION_MD5 = {  # official gz (zalandoresearch/fashion-mnist README)
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# Debian bookworm `dataset-fashion-mnist` 0.0~git20200523.55506a9-1 recompresses the files (same
# payload, other gz bytes); decompressed md5s accept the plain IDX files as well.
_FASHION_DEBIAN_MD5 = {
    "train-images-idx3-ubyte.gz": "cf8536b0aa1a6ac5fa3f23001093305c",
    "train-labels-idx1-ubyte.gz": "10bea18fdb374794d4bb42e356e600c9",
    "t10k-images-idx3-ubyte.gz": "f78720b4224f21cce2f2ccf2d7a94c9a",
    "t10k-labels-idx1-ubyte.gz": "0d30e22e447f3c33dab9ed536400ac01",
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}

_CIFAR10_MD5 = {  # (official file, a known repackaging with placeholder filenames)
    "data_batch_1": ("c99cafc152244af753f735de768cd75f", "adee4bbda7f9b1c79cb540948b5ecc85"),
    "data_batch_2": ("d4bba439e000b95fd0a9bffe97cbabec", "f9af370fe299066f01af1cce0fd1c7bb"),
    "data_batch_3": ("54ebc095f3ab1f0389bbae665268c751", "1d4eaf7f60635554c4df3090c866f45d"),
    "data_batch_4": ("634d18415352ddfa80567beed471001a", "58c335a7adb3d47918b501080639f35b"),
    "data_batch_5": ("482c414d41f54cd18b22e5b47cb7c3cb", "a84eb41326d75bbce39dc2a7b899d7c3"),
    "test_batch": ("40351d587109b95175f43aff81a1287e", "d46697c96368a54c0086f075ceddd063"),
    "batches.meta": ("5ff9c542aee3614f3951f8cda6e48888",),
}


def _merge(*tables: dict[str, str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for table in tables:
        for name, md5 in table.items():
            out[name] = out.get(name, ()) + (md5,)
    return out


SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist", "idx", _IDX_FILES, ("mnist", "MNIST/raw", "mnist/raw", "MNIST"),
        md5=_merge(_MNIST_MD5),
        archives=tuple(Archive(f, m, tuple(u + f for u in _MNIST_MIRRORS), subdir="mnist")
                       for f, m in _MNIST_MD5.items())),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", "idx", _IDX_FILES,
        ("fashion-mnist", "FashionMNIST/raw", "fashion-mnist/raw", "FashionMNIST",
         "fashion_mnist", "data/fashion"),
        md5=_merge(_FASHION_MD5, _FASHION_DEBIAN_MD5),
        archives=tuple(Archive(f, m, tuple(u + f for u in _FASHION_MIRRORS),
                               subdir="fashion-mnist")
                       for f, m in _FASHION_MD5.items())),
    "cifar10": DatasetSpec(
        "cifar10", "cifar",
        {True: tuple(f"data_batch_{i}" for i in range(1, 6)), False: ("test_batch",)},
        ("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10"),
        md5=dict(_CIFAR10_MD5),
        archives=(Archive("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                          tuple(u + "cifar-10-python.tar.gz" for u in _CIFAR_MIRRORS),
                          extract_to="cifar-10-batches-py"),)),
    "cifar100": DatasetSpec(
        "cifar100", "cifar", {True: ("train",), False: ("test",)},
        ("cifar-100-python", "cifar100/cifar-100-python", "cifar100"),
        md5={"train": ("16019d7e3df5f24257cddd939b257f8d",),
             "test": ("f0ef6b0ae62326f3e7ffdfab6717acfc",),
             "meta": ("7973b15100ade9c7d40fb424638fde48",)},
        archives=(Archive("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                          tuple(u + "cifar-100-python.tar.gz" for u in _CIFAR_MIRRORS),
                          extract_to="cifar-100-python"),)),
}


ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}


def canonical_name(name: str) -> str:
    """`name` lower-cased with `_` -> `-` and the usual aliases (FashionMNIST, CIFAR-10) mapped."""
    name = name.lower().replace("_", "-")
    return ALIASES.get(name, name)


def get_spec(name: str) -> DatasetSpec:
    """The `DatasetSpec` of a real dataset; DatasetNotFoundError for an unknown name."""
    if name not in SPECS:
        raise DatasetNotFoundError(
            f"unknown dataset {name!r}; choose one of {sorted([*SPECS, 'synthetic'])}")
    return SPECS[name]


def md5_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex md5 of a file (about 0.4 s for CIFAR-10's 186 MB on one CPU core, warm cache)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_md5(spec: DatasetSpec, path: Path) -> None:
    """DatasetIntegrityError if `path` has reference md5s and matches none of them.

    Files with no reference on record (e.g. MNIST stored uncompressed) pass: their structure is
    still checked by the reader.
    """
    accepted = spec.md5.get(path.name)
    if not accepted:
        return
    got = md5_file(path)
    if got not in accepted:
        raise DatasetIntegrityError(
            f"{path}: md5 {got} matches none of the known copies ({', '.join(accepted)}); the file "
            f"is corrupt or a different version. Delete it and load again (a missing file is "
            f"downloaded), or load with verify='structure' to check only its format")
