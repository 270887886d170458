"""`load_dataset`: find (or download), verify, decode and cache a dataset split."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rankwise.data import cache as _cache
from rankwise.data.cifar import read_batch
from rankwise.data.dataset import NUM_CLASSES, STATS, ImageDataset
from rankwise.data.ensure import ensure_split
from rankwise.data.idx import load_idx_split
from rankwise.data.search import cache_root
from rankwise.data.sources import DatasetSpec, canonical_name, check_md5, get_spec
from rankwise.data.synthetic import make_synthetic
from rankwise.errors import ConfigError

DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100", "synthetic")
VERIFY_MODES = ("md5", "structure")


def load_dataset(name: str, train: bool, data_dir: str | os.PathLike | None = None,
                 download: bool | None = None, *, verify: str = "md5",
                 cache_dir: str | os.PathLike | None = None, cache: bool = True,
                 **kw: Any) -> ImageDataset:
    """One split of `name` as an `ImageDataset` (images uint8 (N, C, H, W), labels int64 (N,)).

    `name`: mnist, fashion-mnist (IDX files, `.gz` or plain), cifar10, cifar100 (python pickled
    batches, read with a restricted unpickler) or synthetic (kw: `size`, `shape=(C, H, W)`,
    `num_classes`, `seed`; see `make_synthetic`).
    Real data is searched in `$RANKWISE_DATA`, `/usr/share/datasets/<name>`, `../shared/data`,
    `~/.cache/rankwise` (see `rankwise.data.search`), or only in `data_dir` when it is given.
    `download`: None (auto) fetches a dataset missing from the default places into the first
    writable of `$RANKWISE_DATA`, `~/.cache/rankwise` (official URL, then a mirror; md5-checked);
    True also fills an explicit `data_dir`; False never downloads; `$RANKWISE_OFFLINE=1` forbids
    downloads whatever `download` says (see `rankwise.data.ensure`).
    `verify`: "md5" (default; checks files against the official md5s and known repackagings,
    about 0.4 s for CIFAR-10, done once because the decoded split is cached) or "structure"
    (format checks only; these always run). The decoded arrays are cached as `.npy` under
    `cache_dir` (default `~/.cache/rankwise/decoded`); `cache=False` disables it.
    Raises DatasetNotFoundError (the reason and fix, every directory looked at and every URL
    tried) or DatasetIntegrityError.
    """
    name = canonical_name(name)
    if name == "synthetic":
        return make_synthetic(train=train, **kw)
    spec = get_spec(name)
    if kw:
        raise ConfigError(f"load_dataset({name!r}): unexpected options {sorted(kw)}; only "
                          f"'synthetic' takes extra keyword arguments")
    if verify not in VERIFY_MODES:
        raise ConfigError(f"load_dataset: verify={verify!r}, expected one of {VERIFY_MODES}")
    files = ensure_split(spec, train, data_dir, download)

    cache_path = (Path(cache_dir).expanduser() if cache_dir is not None
                  else cache_root() / "decoded")
    key = _cache.cache_key(name, train, files, verify)
    arrays = _cache.load_cached(cache_path, name, train, key) if cache else None
    if arrays is None:
        arrays = _decode(spec, files, verify)
        if cache:
            _cache.store_cached(cache_path, name, train, key, *arrays)
    images, labels = arrays
    mean, std = STATS[name]
    return ImageDataset(torch.from_numpy(np.ascontiguousarray(images)),
                        torch.from_numpy(np.ascontiguousarray(labels)),
                        NUM_CLASSES[name], mean, std, name)


def _decode(spec: DatasetSpec, files: list[Path], verify: str
            ) -> tuple[np.ndarray, np.ndarray]:
    """Verify then decode the split's files into (uint8 (N, C, H, W), int64 (N,))."""
    if verify == "md5":
        for path in files:
            check_md5(spec, path)
    num_classes = NUM_CLASSES[spec.name]
    if spec.kind == "idx":
        return load_idx_split(files[0], files[1], num_classes)
    label_key = "labels" if spec.name == "cifar10" else "fine_labels"
    parts = [read_batch(path, label_key, num_classes) for path in files]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return np.ascontiguousarray(images), labels
