"""ImageDataset validation and helpers."""

from __future__ import annotations

import pytest
import torch

from rankwise.data import STATS, ImageDataset
from rankwise.errors import DatasetIntegrityError


def _ok(**over) -> dict:
    kw = dict(images=torch.zeros(4, 3, 2, 2, dtype=torch.uint8), labels=torch.tensor([0, 1, 2, 3]),
              num_classes=4, mean=(0.5,) * 3, std=(0.2,) * 3, name="t")
    kw.update(over)
    return kw


@pytest.mark.parametrize("over", [
    {"images": torch.zeros(4, 3, 2, 2)},                      # float images
    {"images": torch.zeros(4, 6, dtype=torch.uint8)},         # not 4-D
    {"labels": torch.tensor([0, 1, 2], dtype=torch.int64)},   # wrong length
    {"labels": torch.tensor([0, 1, 2, 3], dtype=torch.int32)},
    {"labels": torch.tensor([0, 1, 2, 4])},                   # out of range
    {"mean": (0.5,)},                                         # wrong channel count
    {"std": (0.2, 0.0, 0.2)},
])
def test_invalid_datasets_raise(over: dict) -> None:
    with pytest.raises(DatasetIntegrityError, match="dataset 't'"):
        ImageDataset(**_ok(**over))


def test_subset_and_shape() -> None:
    ds = ImageDataset(**_ok())
    sub = ds.subset(slice(1, 3))
    assert len(sub) == 2 and sub.shape == (3, 2, 2) and sub.labels.tolist() == [1, 2]


def test_stats_cover_every_real_dataset() -> None:
    assert STATS["cifar10"] == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # TRP recipe
    assert set(STATS) == {"mnist", "fashion-mnist", "cifar10", "cifar100"}
