"""The synthetic dataset: shapes, determinism, and that its labels are learnable."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankwise.data import BatchLoader, load_dataset


@settings(max_examples=25, deadline=None)
@given(size=st.integers(0, 20), c=st.integers(1, 3), h=st.integers(1, 12),
       w=st.integers(1, 12), k=st.integers(1, 7))
def test_shapes_and_ranges(size: int, c: int, h: int, w: int, k: int) -> None:
    ds = load_dataset("synthetic", True, size=size, shape=(c, h, w), num_classes=k)
    assert ds.images.shape == (size, c, h, w) and ds.images.dtype == torch.uint8
    assert ds.labels.shape == (size,) and ds.labels.dtype == torch.int64
    if size:
        assert 0 <= int(ds.labels.min()) and int(ds.labels.max()) < k
    assert len(ds.mean) == c == len(ds.std)


def test_deterministic_and_splits_differ() -> None:
    a = load_dataset("synthetic", True, size=50, seed=3)
    b = load_dataset("synthetic", True, size=50, seed=3)
    test = load_dataset("synthetic", False, size=50, seed=3)
    other = load_dataset("synthetic", True, size=50, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, test.images)
    assert not torch.equal(a.images, other.images)


def test_training_lowers_loss_and_generalizes() -> None:
    """A linear classifier trained on the train split beats chance clearly on the test split."""
    torch.manual_seed(0)
    train = load_dataset("synthetic", True, size=400, shape=(3, 8, 8), num_classes=4, seed=1)
    test = load_dataset("synthetic", False, size=200, shape=(3, 8, 8), num_classes=4, seed=1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = BatchLoader(train, 50, seed=0)
    first = last = None
    for epoch in range(5):
        loader.set_epoch(epoch)
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            first = loss.item() if first is None else first
            last = loss.item()
    assert last < 0.5 * first
    x, y = next(iter(BatchLoader(test, 200, shuffle=False)))
    assert (model(x).argmax(1) == y).float().mean() > 0.8
