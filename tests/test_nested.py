"""`map_tensors` reaches every tensor of nested inputs and keeps the containers' kinds."""

from __future__ import annotations

from collections import UserDict, namedtuple

import torch

from rankwise.analysis.latency import rebatch
from rankwise.nested import map_tensors
from rankwise.train.batches import to_device

Pair = namedtuple("Pair", "x y")


def test_every_tensor_is_mapped_and_containers_keep_their_kind() -> None:
    t = torch.ones(2, 3)
    batch = (Pair(t, [t, "label"]), UserDict({"ids": t.long(), "n": 3}))
    out = map_tensors(lambda v: v * 2, batch)
    assert isinstance(out, tuple) and isinstance(out[0], Pair) and isinstance(out[0].y, list)
    assert torch.equal(out[0].x, 2 * t) and torch.equal(out[0].y[0], 2 * t)
    assert out[0].y[1] == "label" and out[1]["n"] == 3  # non-tensors untouched
    assert type(out[1]) is dict and torch.equal(out[1]["ids"], 2 * t.long())
    assert map_tensors(lambda v: v + 1, None) is None


def test_the_walkers_built_on_it_reach_nested_tensors() -> None:
    x = torch.arange(6.0).reshape(2, 3)
    moved = to_device(Pair(x, {"mask": x}), torch.device("meta"))
    assert moved.x.is_meta and moved.y["mask"].is_meta
    out = rebatch({"ids": x, "scale": torch.tensor(2.0)}, 4)
    assert out["ids"].shape == (4, 3) and torch.equal(out["ids"][3], x[0])
    assert out["scale"].dim() == 0  # a 0-d tensor has no batch dimension to repeat
