"""DDP over gloo on CPU: 2 processes must reproduce the single-process run on the same global batch.

The comparison uses full-batch steps (global batch = the whole 64-sample training set, 32 per
rank) with a BatchNorm-free model and no augmentation, so both runs compute the gradient of
exactly the same loss: DDP averages the two half-batch mean gradients, which equals the
full-batch mean gradient up to float32 summation order (~1e-7 relative per step). Tolerance
1e-5 (absolute, on losses and weights after 3 steps): ~100x the rounding noise, yet far below
what a sharding bug would cause (a wrong or duplicated half batch changes the loss by ~1e-2).
With mini-batches the runs differ by design: `BatchLoader` gives each rank a contiguous slice
of the epoch permutation, so step i of DDP sees other samples than step i of one process.
The ranks meet through a file store in the test's tmp dir (no TCP port to pick and lose to
another process between picking and binding); the trainer reuses the initialized group.
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rankwise.io.model_file import load
from rankwise.train import TrainConfig, Trainer, read_metrics
from tests.train.helpers import synthetic, tiny_cnn

TOL = 1e-5


def make_cfg() -> TrainConfig:
    return TrainConfig(epochs=3, batch_size=64, lr=0.2, schedule="none", augment=False, seed=0,
                       quiet=True)


def worker(rank: int, world_size: int, store: str, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world_size)
    try:
        trainer = Trainer(tiny_cnn(bn=False), make_cfg(), synthetic(True, 64),
                          synthetic(False, 32), out_dir)
        assert trainer.dist.world_size == world_size and trainer.is_main == (rank == 0)
        assert trainer.steps_per_epoch == 1
        trainer.fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_matches_single_process(tmp_path, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    single = tiny_cnn(bn=False)
    Trainer(single, make_cfg(), synthetic(True, 64), synthetic(False, 32), tmp_path / "one").fit()

    store = tmp_path / "rendezvous"  # must not exist yet: each run gets a fresh file store
    mp.spawn(worker, args=(2, str(store), str(tmp_path / "ddp")), nprocs=2, join=True)

    ddp_model = load(tmp_path / "ddp", model=tiny_cnn(bn=False, seed=3))
    for (k, a), b in zip(single.state_dict().items(), ddp_model.state_dict().values(),
                         strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL, msg=k)
        assert not torch.equal(a, tiny_cnn(bn=False).state_dict()[k])  # it did train
    one = [r for r in read_metrics(tmp_path / "one") if r["event"] == "epoch"]
    two = [r for r in read_metrics(tmp_path / "ddp") if r["event"] == "epoch"]
    assert len(two) == 3  # only rank 0 logs
    for a, b in zip(one, two, strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) < TOL
        assert abs(a["test_loss"] - b["test_loss"]) < TOL
    assert one[-1]["train_loss"] < one[0]["train_loss"]
    names = sorted(p.name for p in (tmp_path / "ddp").iterdir())
    assert names == ["checkpoint.pt", "config.json", "metrics.jsonl", "model.json",
                     "model.safetensors"]
