import random

import numpy as np
import pytest
import torch

from rankwise.errors import CheckpointError
from rankwise.train.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _draw():
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)],
            float(np.random.randn()))


def test_rng_state_roundtrip_through_weights_only_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # leave a cached gaussian in numpy's state
    state = {"model": {}, "optimizer": {}, "epoch": 0, "global_step": 0, "rng": rng_state()}
    expected = _draw()
    save_checkpoint(state, tmp_path / "c.pt")
    _draw()  # advance every generator
    loaded = load_checkpoint(tmp_path / "c.pt")  # uses weights_only=True
    set_rng_state(loaded["rng"])
    assert _draw() == expected


def test_atomic_save_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "checkpoint.pt"
    for step in range(3):
        save_checkpoint({"model": {"w": torch.full((2,), float(step))}, "optimizer": {},
                         "epoch": step, "global_step": step}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    state = load_checkpoint(path)
    assert state["epoch"] == 2 and torch.equal(state["model"]["w"], torch.full((2,), 2.0))


def test_failed_save_keeps_old_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"model": {}, "optimizer": {}, "epoch": 1, "global_step": 5}, path)
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint({"model": Unpicklable(), "optimizer": {}, "epoch": 2,
                         "global_step": 9}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_missing_truncated_and_foreign_files_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    path = tmp_path / "c.pt"
    save_checkpoint({"model": {"w": torch.ones(100)}, "optimizer": {}, "epoch": 0,
                     "global_step": 0}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    torch.save({"weights": torch.ones(1)}, path)
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(path)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "optimizer": {}, "epoch": 0, "global_step": 0,
                "payload": _draw}, path)  # a function: needs full unpickling
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
