"""`decompose_and_finetune`: three-stage accuracies, fine-tuning effect, run dir and resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from rankwise import io
from rankwise.data import load_dataset
from rankwise.errors import ConfigError
from rankwise.layers import FactorizedLayer
from rankwise.train import TrainConfig, Trainer, evaluate
from rankwise.train.pretrain import FINETUNE_DIR, decompose_and_finetune, default_finetune_config

SHAPE = (3, 8, 8)
CLASSES = 4


def tiny_cnn() -> nn.Module:
    """conv3x3(3→16) BN ReLU conv3x3(16→16) BN ReLU pool linear(16→4), fixed init."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, CLASSES))


def data(train: bool, size: int):
    return load_dataset("synthetic", train, size=size, shape=SHAPE, num_classes=CLASSES, seed=0)


@pytest.fixture(scope="module")
def splits():
    return data(True, 256), data(False, 128)


@pytest.fixture(scope="module")
def trained(splits, tmp_path_factory):
    """The tiny CNN trained 4 epochs (the 'pre-trained' model every test decomposes)."""
    train, test = splits
    model = tiny_cnn()
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.1, schedule="cosine", quiet=True)
    Trainer(model, cfg, train, test, tmp_path_factory.mktemp("pretrained")).fit()
    return model.eval()


def cfg(**kw) -> TrainConfig:
    return default_finetune_config(batch_size=32, quiet=True, **kw)


def test_three_stages_and_finetuning_helps(splits, trained, tmp_path):
    train, test = splits
    original = copy.deepcopy(trained.state_dict())
    model, report = decompose_and_finetune(trained, train, test, "tucker2", "fixed:2", epochs=2,
                                           train_cfg=cfg(), out_dir=tmp_path, eval_train=True)
    acc, train_acc = report["accuracy"], report["train_accuracy"]
    # stage 1 is the untouched trained model, measured independently here
    assert acc["before"] == pytest.approx(evaluate(trained, test)["acc"])
    assert train_acc["before"] == pytest.approx(evaluate(trained, train)["acc"])
    assert acc["before"] > 0.5  # the fixture did learn (chance is 0.25)
    # rank 2 everywhere removes information: accuracy drops right after decomposition
    assert train_acc["decomposed"] < train_acc["before"]
    # fine-tuning at lr 0.01 recovers on the data it trains on
    assert train_acc["finetuned"] > train_acc["decomposed"]
    assert acc["finetuned"] >= acc["decomposed"] - 0.05
    # the returned model is the fine-tuned factorized one (not the pre-fine-tuning copy)
    assert evaluate(model, test)["acc"] == pytest.approx(acc["finetuned"])
    assert any(isinstance(m, FactorizedLayer) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) == report["totals"]["params_after"]
    assert report["totals"]["params_after"] < report["totals"]["params_before"]
    assert {r["rank"] if isinstance(r["rank"], int) else max(r["rank"])
            for r in report["rows"]} == {2}
    # the caller's model was not modified (inplace defaults to False)
    for k, v in trained.state_dict().items():
        assert torch.equal(v, original[k]), k
    # the trainer's run dir, with the recipe
    run = tmp_path / FINETUNE_DIR
    assert (run / "checkpoint.pt").is_file() and (run / "metrics.jsonl").is_file()
    ft = report["finetune"]
    assert ft["run_dir"] == str(run) and ft["epochs"] == 2
    assert ft["train_config"]["lr"] == 0.01 and ft["train_config"]["schedule"] == "cosine"
    assert ft["metrics"]["epoch"] == 2 and ft["metrics"]["step"] == 2 * 256 // 32
    assert ft["metrics"]["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine reached its end
    assert report["test_samples"] == len(test)
    assert report["acc_after_decompose"] == acc["decomposed"]  # aliases read by bench.quick
    assert report["acc_after_finetune"] == acc["finetuned"] and report["finetune_seconds"] > 0
    json.dumps(report)  # plain JSON


def test_no_finetuning_and_decompose_kwargs(splits, trained):
    train, test = splits
    model, report = decompose_and_finetune(trained, train, test, "tucker2", "energy:0.9",
                                           epochs=0, skip_first_conv=True, linear_format=None)
    assert report["finetune"] is None and report["accuracy"]["finetuned"] is None
    assert "train_accuracy" not in report
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["0"]["format"] is None and "first conv" in rows["0"]["note"]
    assert "8" not in rows or rows["8"]["format"] is None  # linear_format=None keeps it dense
    assert isinstance(model[3], FactorizedLayer) and isinstance(model[8], nn.Linear)
    # 90 % of the energy kept (rank (13, 13) of 16): predictions barely change
    assert report["accuracy"]["decomposed"] == pytest.approx(report["accuracy"]["before"],
                                                             abs=0.05)


def test_resume_matches_uninterrupted_run(splits, trained, tmp_path, monkeypatch):
    train, test = splits
    full, _ = decompose_and_finetune(trained, train, test, "tucker2", "fixed:2", epochs=2,
                                     train_cfg=cfg(), out_dir=tmp_path / "full")

    class Killed(Exception):
        pass

    original = Trainer._train_epoch
    calls = {"n": 0, "kill_at": 2}

    def counted(self, progress):
        calls["n"] += 1
        if calls["n"] == calls["kill_at"]:
            raise Killed
        return original(self, progress)

    monkeypatch.setattr(Trainer, "_train_epoch", counted)
    with pytest.raises(Killed):
        decompose_and_finetune(trained, train, test, "tucker2", "fixed:2", epochs=2,
                               train_cfg=cfg(), out_dir=tmp_path / "cut")
    calls.update(n=0, kill_at=-1)
    resumed, report = decompose_and_finetune(trained, train, test, "tucker2", "fixed:2",
                                             epochs=2, train_cfg=cfg(),
                                             out_dir=tmp_path / "cut", resume=True)
    assert calls["n"] == 1  # only the second epoch was trained again
    assert report["finetune"]["metrics"]["step"] == 2 * 256 // 32
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), k


def test_saved_run_is_loadable_with_meta(splits, tmp_path):
    """With `meta["model"]`, the fine-tuning run dir rebuilds through `rankwise.load`."""
    train, test = data(True, 64), data(False, 32)
    from rankwise.models import create_model

    kwargs = {"num_classes": CLASSES, "in_channels": 3, "image_size": 8, "width": 4}
    torch.manual_seed(0)
    base = create_model("smallcnn", **kwargs)
    model, report = decompose_and_finetune(
        base, train, test, "tucker2", "fixed:2", epochs=1, train_cfg=cfg(), out_dir=tmp_path,
        meta={"model": {"name": "smallcnn", "kwargs": kwargs}})
    loaded = io.load(tmp_path / FINETUNE_DIR)
    x = torch.randn(3, *SHAPE)
    assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_errors(splits, trained, tmp_path):
    train, test = splits
    with pytest.raises(ConfigError, match="test_data"):
        decompose_and_finetune(trained, train, None, epochs=0)
    with pytest.raises(ConfigError, match="out_dir"):
        decompose_and_finetune(trained, train, test, epochs=1)
    with pytest.raises(ConfigError, match="epochs"):
        decompose_and_finetune(trained, train, test, epochs=-1)
