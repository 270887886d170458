"""`BatchLoader`: batches from a uint8 dataset held on the device, augmented with tensor ops.

No worker processes: the whole split lives on `device` as uint8, each batch is gathered by index,
optionally augmented (pad-4 random crop + horizontal flip, whole batch at once) and normalized.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from rankwise.data.dataset import ImageDataset
from rankwise.errors import ConfigError


def _derive_seed(*parts: object) -> int:
    """A 63-bit seed from `parts` (no collisions between e.g. (seed=1, epoch=0) and (0, 1))."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Pad `x` (B, C, H, W) with `pad` zeros per side, crop back to (H, W) at a random offset per
    image, and flip each image horizontally with probability 1/2. Any dtype; the random draws
    come from `gen` (a CPU generator), so results are identical on every device."""
    b, c, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=gen).to(x.device)
    flips = torch.rand(b, generator=gen).lt(0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2 pad, W + 2 pad)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # flipped crop = reversed columns
    # one flat gather per image: 4-5x faster on CPU than advanced indexing
    flat = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(b, 1, h * w)
    out = torch.gather(padded.reshape(b, c, -1), 2, flat.expand(b, c, h * w))
    return out.view(b, c, h, w)


class BatchLoader:
    """Iterable of `(x, y)`: x float32 normalized (B, C, H, W) on `device`, y int64 (B,).

    Each epoch draws one permutation of all N samples from a generator seeded by
    (`seed`, epoch); call `set_epoch(e)` before iterating (as with DistributedSampler, the same
    epoch gives the same order). With `world_size` > 1, rank r takes the r-th contiguous slice
    of that permutation; all ranks get the same number of samples: with `drop_last` the tail
    (< world_size samples) is dropped, otherwise the permutation is wrapped around to pad it.
    `drop_last` also drops a final incomplete batch. `augment`: pad-4 random crop + flip,
    drawn from (`seed`, epoch, rank).
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, shuffle: bool = True,
                 augment: bool = False, device: str | torch.device = "cpu", seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ConfigError(f"BatchLoader: batch_size={batch_size}, expected >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"BatchLoader: rank={rank} world_size={world_size}, expected "
                              f"0 <= rank < world_size")
        if len(dataset) == 0:
            raise ConfigError(f"BatchLoader: dataset {dataset.name!r} is empty")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle, self.augment, self.drop_last = shuffle, augment, drop_last
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.device = torch.device(device)
        self.epoch = 0
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)
        c = dataset.images.shape[1]
        self._mean = torch.tensor(dataset.mean, device=self.device).view(1, c, 1, 1) * 255.0
        self._inv_std = 1.0 / (torch.tensor(dataset.std, device=self.device)
                               .view(1, c, 1, 1) * 255.0)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle and augmentation draws of `epoch`."""
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before dropping an incomplete last batch)."""
        n = len(self.dataset)
        if self.drop_last:
            return n // self.world_size
        return -(-n // self.world_size)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, int64 (num_samples,) on CPU."""
        n = len(self.dataset)
        if self.shuffle:
            gen = torch.Generator().manual_seed(_derive_seed("shuffle", self.seed, self.epoch))
            perm = torch.randperm(n, generator=gen)
        else:
            perm = torch.arange(n)
        per_rank = self.num_samples
        total = per_rank * self.world_size
        if total > n:
            perm = perm.repeat(-(-total // n))
        return perm[self.rank * per_rank:(self.rank + 1) * per_rank]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32 (x / 255 - mean) / std."""
        return (x.float() - self._mean) * self._inv_std

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.indices().to(self.device)
        gen = torch.Generator().manual_seed(
            _derive_seed("augment", self.seed, self.epoch, self.rank))
        for i in range(len(self)):
            batch = idx[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[batch]
            if self.augment:
                x = random_crop_flip(x, gen)
            yield self.normalize(x), self.labels[batch]
