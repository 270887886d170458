"""BatchLoader: normalization, determinism per (seed, epoch), sharding, batched augmentation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankwise.data import BatchLoader, ImageDataset, random_crop_flip
from rankwise.errors import ConfigError


def _dataset(n: int, shape: tuple[int, int, int] = (3, 8, 8)) -> ImageDataset:
    """Image i is filled with value i % 256 and has label i % 10 (so samples are traceable)."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, *shape).clone()
    c = shape[0]
    return ImageDataset(images, torch.arange(n) % 10, 10, (0.5,) * c, (0.25,) * c, "toy")


def _ids(loader: BatchLoader) -> list[int]:
    """Sample ids seen in one epoch (unnormalize the first pixel)."""
    out: list[int] = []
    for x, _ in loader:
        out += ((x[:, 0, 0, 0] * 0.25 + 0.5) * 255).round().long().tolist()
    return out


def test_normalization_and_labels() -> None:
    ds = _dataset(20)
    x, y = next(iter(BatchLoader(ds, 20, shuffle=False)))
    assert x.dtype == torch.float32 and x.shape == (20, 3, 8, 8) and y.dtype == torch.int64
    expected = (torch.arange(20).float() / 255 - 0.5) / 0.25
    assert torch.allclose(x[:, 1, 3, 4], expected, atol=1e-5)
    assert torch.equal(y, torch.arange(20) % 10)


def test_shuffle_deterministic_per_seed_and_epoch() -> None:
    ds = _dataset(50)
    a, b = BatchLoader(ds, 7, seed=1), BatchLoader(ds, 7, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    ids = _ids(a)
    assert ids == _ids(b) and sorted(ids) == list(range(50)) and ids != list(range(50))
    b.set_epoch(4)
    assert _ids(b) != ids
    assert _ids(BatchLoader(ds, 7, seed=2)) != _ids(BatchLoader(ds, 7, seed=1))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60), world=st.integers(1, 5), bs=st.integers(1, 9),
       drop_last=st.booleans(), epoch=st.integers(0, 3))
def test_sharding_disjoint_equal_and_complete(n: int, world: int, bs: int, drop_last: bool,
                                             epoch: int) -> None:
    ds = _dataset(n)
    loaders = [BatchLoader(ds, bs, seed=5, rank=r, world_size=world, drop_last=drop_last)
               for r in range(world)]
    for loader in loaders:
        loader.set_epoch(epoch)
    shards = [loader.indices().tolist() for loader in loaders]
    assert len({len(s) for s in shards}) == 1  # equal lengths
    flat = [i for s in shards for i in s]
    if drop_last:
        assert len(set(flat)) == len(flat) == (n // world) * world  # disjoint
    else:
        assert set(flat) == set(range(n)) and len(flat) == -(-n // world) * world
        assert len(set(flat)) == n  # only the wrap-around padding repeats samples
    for loader, shard in zip(loaders, shards, strict=True):
        batches = list(loader)
        assert len(batches) == len(loader)
        sizes = [len(y) for _, y in batches]
        assert all(s == bs for s in sizes[:-1]) and sum(sizes) in (len(shard),
                                                                   len(shard) // bs * bs)
        if drop_last:
            assert all(s == bs for s in sizes)


def test_rank_slices_come_from_one_permutation() -> None:
    ds = _dataset(40)
    full = BatchLoader(ds, 8, seed=9)
    parts = [BatchLoader(ds, 8, seed=9, rank=r, world_size=4) for r in range(4)]
    assert torch.cat([p.indices() for p in parts]).tolist() == full.indices().tolist()


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 6), c=st.integers(1, 3), h=st.integers(1, 10), w=st.integers(1, 10),
       seed=st.integers(0, 100))
def test_crop_flip_is_a_shifted_window(b: int, c: int, h: int, w: int, seed: int) -> None:
    """Every output equals some (dy, dx) window of the zero-padded input, possibly mirrored."""
    x = torch.randint(1, 256, (b, c, h, w), dtype=torch.uint8)  # no zeros: padding is visible
    out = random_crop_flip(x, torch.Generator().manual_seed(seed))
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(b):
        windows = [padded[i, :, dy:dy + h, dx:dx + w] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], win) or torch.equal(out[i], win.flip(-1))
                   for win in windows)


def test_augmentation_deterministic_and_varied() -> None:
    gen_images = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 32, 32), generator=gen_images, dtype=torch.uint8)
    ds = ImageDataset(images, torch.zeros(64, dtype=torch.int64), 10, (0.5,) * 3, (0.25,) * 3,
                      "toy")
    a = BatchLoader(ds, 64, shuffle=False, augment=True, seed=3)
    b = BatchLoader(ds, 64, shuffle=False, augment=True, seed=3)
    xa, xb = next(iter(a)), next(iter(b))
    assert torch.equal(xa[0], xb[0])
    plain = next(iter(BatchLoader(ds, 64, shuffle=False)))[0]
    changed = (xa[0] != plain).flatten(1).any(1)
    assert changed.float().mean() > 0.9  # an image stays unchanged with probability 1/162
    b.set_epoch(1)
    assert not torch.equal(next(iter(b))[0], xa[0])


def test_bad_arguments() -> None:
    ds = _dataset(4)
    with pytest.raises(ConfigError):
        BatchLoader(ds, 0)
    with pytest.raises(ConfigError):
        BatchLoader(ds, 2, rank=2, world_size=2)
