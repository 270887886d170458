"""`rankwise.run` building blocks: resume compatibility, run-directory rules, the run lock,
metrics repair after a kill, and the checkpoint digest."""

import json

import pytest
import torch

from rankwise.errors import CheckpointError, ConfigError
from rankwise.train.checkpoint import load_checkpoint, save_checkpoint
from rankwise.train.config import DataConfig, ModelConfig, TrainConfig
from rankwise.train.logger import read_metrics, repair_metrics
from rankwise.train.rundir import RunLock, prepare_run_dir
from rankwise.train.runspec import resume_mismatches

# config.json as the previous release wrote it (`rankwise train` of a dense resnet20 run)
OLD = {"dataset": {"kwargs": {}, "limit_test": None, "limit_train": None, "name": "cifar10"},
       "input_shape": [3, 32, 32], "method": "trp",
       "method_config": {"scheme": "channel", "energy": 0.9, "period": 1,
                         "nuclear_weight": 3e-4, "old_bookkeeping": 1},
       "model": {"kwargs": {"in_channels": 3, "num_classes": 10}, "name": "resnet20"},
       "train": {**TrainConfig(epochs=40, schedule="cosine", milestones=[82, 122],
                               precision="bf16", channels_last=True, num_threads=1,
                               quiet=True).to_dict(), "legacy_key": 5},
       "world_size": 1}


def _new(**train_kw):
    kw = {"epochs": 40, "schedule": "cosine", "milestones": [82, 122], "precision": "bf16",
          "channels_last": True, **train_kw}
    train = TrainConfig(**kw)
    meta = {k: OLD[k] for k in ("dataset", "input_shape", "method", "model")}
    meta["method_config"] = {"scheme": "channel", "energy": 0.9, "period": 1,
                             "nuclear_weight": 3e-4, "energy_on": "sigma2"}
    return {"train": train.to_dict(), **meta, "rankwise_version": "9.9"}


def test_a_run_of_the_previous_release_resumes_with_the_same_settings():
    defaults = {"energy_on": "sigma2"}
    assert resume_mismatches(OLD, _new(num_threads=2, epochs=80), TrainConfig().to_dict(),
                             defaults) == []
    bad = resume_mismatches(OLD, _new(batch_size=64, lr=0.2), TrainConfig().to_dict(),
                            defaults)
    assert len(bad) == 2 and any("batch_size" in b for b in bad)
    changed = _new()
    changed["method_config"]["energy_on"] = "sigma"  # a new option, not at its default
    assert resume_mismatches(OLD, changed, TrainConfig().to_dict(), defaults)
    other_data = _new()
    other_data["dataset"] = {**OLD["dataset"], "name": "cifar100"}
    assert resume_mismatches(OLD, other_data, TrainConfig().to_dict(), defaults)


def test_run_dir_rules(tmp_path):
    out = tmp_path / "r"
    assert prepare_run_dir(out) == "fresh"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="--overwrite"):
        prepare_run_dir(out)
    assert prepare_run_dir(out, resume=True) == "resume"
    assert prepare_run_dir(out, overwrite=True) == "overwrite"
    with pytest.raises(ConfigError, match="contradict"):
        prepare_run_dir(out, resume=True, overwrite=True)
    with pytest.raises(CheckpointError, match="not found"):
        prepare_run_dir(tmp_path / "none", resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="file"):
        prepare_run_dir(tmp_path / "file")


def test_run_lock_is_exclusive_and_released(tmp_path):
    out = tmp_path / "r"
    with RunLock(out):
        with pytest.raises(ConfigError, match="another run"):
            RunLock(out).acquire()
    with RunLock(out) as lock:  # free again
        assert lock.fd is not None


def test_repair_metrics_matches_the_checkpoint(tmp_path):
    rows = [{"event": "step", "step": 2}, {"event": "epoch", "epoch": 1, "step": 4},
            {"event": "step", "step": 6}, {"event": "epoch", "epoch": 2, "step": 8},
            {"event": "step", "step": 6}, {"event": "epoch", "epoch": 2, "step": 8},
            {"event": "step", "step": 10}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                            + '{"event": "st')  # torn last line
    repair_metrics(tmp_path, epoch=2, global_step=8,
                   epoch_rows=[{"epoch": 1, "step": 4}, {"epoch": 2, "step": 8}])
    got = [(r["event"], r["step"]) for r in read_metrics(tmp_path)]
    assert got == [("step", 2), ("epoch", 4), ("step", 6), ("step", 6), ("epoch", 8)]
    # a checkpoint written after epoch 3 whose metrics line was lost to a kill
    repair_metrics(tmp_path, epoch=3, global_step=12,
                   epoch_rows=[{"epoch": e, "step": 4 * e} for e in (1, 2, 3)])
    assert [r["epoch"] for r in read_metrics(tmp_path) if r["event"] == "epoch"] == [1, 2, 3]


def test_checkpoint_digest_catches_a_changed_number(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"model": {"w": torch.ones(8)}, "optimizer": {}, "epoch": 3,
                     "global_step": 30}, path)
    assert load_checkpoint(path)["epoch"] == 3
    state = torch.load(path, weights_only=True)
    state["global_step"] = 31  # re-saved by hand with the old digest
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="integrity"):
        load_checkpoint(path)
    del state["sha256"]  # checkpoints of the previous release have no digest: still load
    torch.save(state, path)
    assert load_checkpoint(path)["global_step"] == 31


def test_option_declarations_validate():
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="limit_train"):
        DataConfig("synthetic", limit_train=0)
    with pytest.raises(ConfigError, match="contradict"):
        DataConfig("mnist", download=True, offline=True)
    assert DataConfig("mnist", offline=True).download_mode is False
    assert ModelConfig("resnet20", width=8).width == 8
