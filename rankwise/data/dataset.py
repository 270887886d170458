"""`ImageDataset`: a whole split held as one uint8 tensor, plus per-dataset normalization stats."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rankwise.errors import DatasetIntegrityError

# Per-channel mean/std of the training split, in [0, 1] pixel units.
# CIFAR-10 uses the values of TRP's recipe (the widely copied kuangliu numbers; the std is the
# mean of per-image stds, not the pooled std 0.247/0.243/0.261).
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

NUM_CLASSES: dict[str, int] = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100}


@dataclass
class ImageDataset:
    """One split of an image classification dataset, fully in memory.

    `images`: uint8 tensor (N, C, H, W), pixel values 0..255; `labels`: int64 tensor (N,) in
    [0, num_classes); `mean`/`std`: per-channel normalization in [0, 1] pixel units (len C).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise DatasetIntegrityError if dtypes, shapes, stats or label range are inconsistent."""
        where = f"dataset {self.name!r}"
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DatasetIntegrityError(
                f"{where}: images must be a uint8 (N, C, H, W) tensor, got "
                f"{self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise DatasetIntegrityError(
                f"{where}: labels must be int64 ({self.images.shape[0]},), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}")
        c = self.images.shape[1]
        if len(self.mean) != c or len(self.std) != c or min(self.std) <= 0:
            raise DatasetIntegrityError(
                f"{where}: mean/std need {c} entries (std > 0), got {self.mean}/{self.std}")
        if len(self.labels) and (int(self.labels.min()) < 0
                                 or int(self.labels.max()) >= self.num_classes):
            raise DatasetIntegrityError(
                f"{where}: labels outside [0, {self.num_classes}): "
                f"min {int(self.labels.min())}, max {int(self.labels.max())}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, index: torch.Tensor | slice) -> ImageDataset:
        """A dataset with the selected samples (shares storage when `index` is a slice)."""
        return ImageDataset(self.images[index], self.labels[index], self.num_classes,
                            self.mean, self.std, self.name)
