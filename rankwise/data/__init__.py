"""Datasets as uint8 tensors and an on-device batch loader with batched augmentation.

`load_dataset(name, train, data_dir=None, download=None, **kw) -> ImageDataset` (a missing
dataset is downloaded unless `download=False` or `$RANKWISE_OFFLINE=1`);
`require_dataset(name, data_dir=None, download=None) -> Path | None` (find or fetch, no decode);
`BatchLoader(dataset, batch_size, shuffle, augment, device, seed, drop_last, rank, world_size)`.
"""

from rankwise.data.dataset import STATS, ImageDataset
from rankwise.data.ensure import require_dataset
from rankwise.data.load import DATASETS, load_dataset
from rankwise.data.loader import BatchLoader, random_crop_flip
from rankwise.data.synthetic import make_synthetic

__all__ = ["DATASETS", "STATS", "BatchLoader", "ImageDataset", "load_dataset",
           "make_synthetic", "random_crop_flip", "require_dataset"]
