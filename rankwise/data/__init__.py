"""Datasets as uint8 tensors and an on-device batch loader with batched augmentation.

`load_dataset(name, train, data_dir=None, download=False, **kw) -> ImageDataset`;
`BatchLoader(dataset, batch_size, shuffle, augment, device, seed, drop_last, rank, world_size)`.
"""

from rankwise.data.dataset import STATS, ImageDataset
from rankwise.data.load import DATASETS, load_dataset
from rankwise.data.loader import BatchLoader, random_crop_flip
from rankwise.data.synthetic import make_synthetic

__all__ = ["DATASETS", "STATS", "BatchLoader", "ImageDataset", "load_dataset",
           "make_synthetic", "random_crop_flip"]
