import json

import pytest
import torch
import torch.nn.functional as F

from rankwise.errors import ConfigError, NonFiniteLossError
from rankwise.train import Hook, TrainConfig, Trainer, evaluate, read_metrics
from rankwise.train.optim import make_sgd
from tests.train.helpers import tiny_cnn


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=32, lr=0.1, schedule="cosine", warmup_epochs=0.5,
                log_every=2, quiet=True)
    base.update(kw)
    return TrainConfig(**base)


def test_fit_learns_and_writes_run_files(tmp_path, train_data, test_data):
    model = tiny_cnn()
    chance = evaluate(model, test_data, 64)["acc"]
    meta = {"dataset": "synthetic", "input_shape": [3, 8, 8]}
    out = Trainer(model, cfg(epochs=4), train_data, test_data, tmp_path, meta=meta).fit()
    assert out["epoch"] == 4 and out["step"] == 4 * 4
    assert out["test_acc"] > max(chance, 0.25) + 0.2  # 4 classes: chance 0.25
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "model.safetensors",
            "model.json"} <= names
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["epochs"] == 4 and config["dataset"] == "synthetic"
    rows = read_metrics(tmp_path)
    epochs = [r for r in rows if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["test_acc"] == pytest.approx(out["test_acc"])
    assert sum(r["event"] == "step" for r in rows) == 16 // 2
    from rankwise.io.model_file import load

    again = load(tmp_path, model=tiny_cnn(seed=5))
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


class Recorder(Hook):
    def __init__(self):
        self.calls = []

    def on_train_start(self, trainer):
        self.calls.append("start")

    def on_batch_start(self, trainer, step):
        self.calls.append(("batch", step))

    def after_backward(self, trainer, step):
        assert all(p.grad is not None for p in trainer.model.parameters())
        self.calls.append(("backward", step))

    def after_step(self, trainer, step):
        assert trainer.global_step == step
        self.calls.append(("step", step))

    def on_epoch_end(self, trainer, epoch, metrics):
        assert "train_loss" in metrics and trainer.epoch == epoch
        self.calls.append(("epoch", epoch))

    def on_train_end(self, trainer):
        self.calls.append("end")


def test_hooks_are_called_in_order(tmp_path, train_data, test_data):
    rec = Recorder()
    Trainer(tiny_cnn(), cfg(epochs=2, batch_size=64), train_data, test_data, tmp_path,
            hooks=[rec]).fit()
    per_step = lambda s: [("batch", s), ("backward", s), ("step", s)]  # noqa: E731
    expected = ["start", *per_step(0), *per_step(1), ("epoch", 0), *per_step(2), *per_step(3),
                ("epoch", 1), "end"]
    assert rec.calls == expected


class L2Penalty(Hook):
    def __init__(self, weight):
        self.weight = weight

    def extra_loss(self, trainer, model):
        return self.weight * sum(p.pow(2).sum() for p in model.parameters())


def test_extra_loss_changes_the_gradient(tmp_path, train_data):
    norms = []
    for i, weight in enumerate([0.0, 0.05]):
        model = tiny_cnn()
        Trainer(model, cfg(epochs=1, lr=0.05, weight_decay=0.0), train_data, None,
                tmp_path / str(i), hooks=[L2Penalty(weight)]).fit()
        norms.append(sum(p.pow(2).sum() for p in model.parameters()).item())
    assert norms[1] < norms[0]


def test_no_weight_decay_on_bn_and_bias():
    model = tiny_cnn()
    opt = make_sgd(model, cfg(wd_on_bn_bias=False, weight_decay=5e-4))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"])
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in model.parameters()
                                                   if p.ndim == 1}


def test_same_seed_same_weights_other_seed_differs(tmp_path, train_data):
    def run(seed, name):
        model = tiny_cnn()
        Trainer(model, cfg(epochs=1, seed=seed), train_data, None, tmp_path / name).fit()
        return [p.detach().clone() for p in model.parameters()]

    a, b, c = run(0, "a"), run(0, "b"), run(1, "c")
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, z) for x, z in zip(a, c, strict=True))


class NaNAfterFirstEpoch(Hook):
    def extra_loss(self, trainer, model):
        return torch.tensor(float("nan")) if trainer.epoch >= 1 else None


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, train_data):
    trainer = Trainer(tiny_cnn(), cfg(epochs=3), train_data, None, tmp_path,
                      hooks=[NaNAfterFirstEpoch()])
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    msg = str(info.value)
    assert "step 4" in msg and "epoch 2/3" in msg and "learning rate" in msg
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (tmp_path / "model.safetensors").exists()


def test_huge_lr_diverges_with_nonfinite_loss_error(tmp_path, train_data):
    with pytest.raises(NonFiniteLossError, match="lr"):
        Trainer(tiny_cnn(bn=False), cfg(epochs=2, lr=1e30, warmup_epochs=0, schedule="none"),
                train_data, None, tmp_path).fit()


def test_bf16_on_cpu_runs_forward_in_bf16_with_fp32_master_weights(tmp_path, train_data):
    model = tiny_cnn()
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer = Trainer(model, cfg(epochs=1, precision="bf16"), train_data, None, tmp_path)
    assert trainer.fit()["train_loss"] > 0
    assert torch.bfloat16 in seen
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_channels_last_on_cpu_matches_default_layout(tmp_path, train_data):
    # NHWC changes the memory layout, not the math: same seed, same losses to float tolerance.
    nchw = Trainer(tiny_cnn(), cfg(epochs=1), train_data, None, tmp_path / "a").fit()
    t = Trainer(tiny_cnn(), cfg(epochs=1, channels_last=True), train_data, None, tmp_path / "b")
    conv = next(m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    nhwc = t.fit()
    assert nhwc["train_loss"] == pytest.approx(nchw["train_loss"], rel=1e-4)


def test_bad_config_values_raise():
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="unknown"):
        TrainConfig.from_dict({"epochs": 1, "lr_max": 3})
    assert TrainConfig.from_dict(TrainConfig(milestones=[3, 5]).to_dict()).milestones == [3, 5]


def test_evaluate_matches_manual_computation_and_restores_mode(test_data):
    model = tiny_cnn().train()
    r = evaluate(model, test_data, batch_size=24)
    assert model.training
    model.eval()
    mean = torch.tensor(test_data.mean).view(1, -1, 1, 1)
    std = torch.tensor(test_data.std).view(1, -1, 1, 1)
    x = (test_data.images.float() / 255 - mean) / std
    with torch.no_grad():
        logits = model(x)
    assert r["n"] == len(test_data)
    assert r["loss"] == pytest.approx(F.cross_entropy(logits, test_data.labels).item(), rel=1e-5)
    assert r["acc"] == pytest.approx((logits.argmax(1) == test_data.labels).float().mean().item())


def test_tensorboard_without_package_warns_and_progress_off_when_not_tty(tmp_path, train_data):
    from rankwise.train.logger import make_progress

    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.warns(UserWarning, match="tensorboard"):
            Trainer(tiny_cnn(), cfg(epochs=1, tensorboard=True), train_data, None, tmp_path)
    assert make_progress(False) is None
    assert make_progress(True) is None  # pytest captures stderr: not a terminal


def test_determinism_flag_is_restored_after_fit(tmp_path, train_data):
    before = torch.are_deterministic_algorithms_enabled()
    Trainer(tiny_cnn(), cfg(epochs=1, deterministic=not before), train_data, None,
            tmp_path).fit()
    assert torch.are_deterministic_algorithms_enabled() == before


def test_epoch_line_reads_well():
    from rankwise.train.logger import epoch_line as _epoch_line

    m = {"epoch": 3, "train_loss": 0.9123, "train_acc": 0.681, "lr": 0.1, "images_per_s": 4210.4}
    assert _epoch_line(m, 164) == "epoch 3/164  train loss 0.912 acc 68.1%  lr 0.1  4210 img/s"
    line = _epoch_line({**m, "test_loss": 0.85, "test_acc": 0.71}, 164)
    assert "test loss 0.850 acc 71.0%" in line


def test_any_iterable_of_batches_and_a_custom_loss(tmp_path, train_data, test_data):
    """A torch DataLoader of (x, y) pairs trains like an ImageDataset; dict batches with a
    `loss_fn` train too (no accuracy is reported then)."""
    from torch.utils.data import DataLoader, TensorDataset

    x = train_data.images.float() / 255.0
    loader = DataLoader(TensorDataset(x, train_data.labels), batch_size=32, shuffle=False)
    test = DataLoader(TensorDataset(test_data.images.float() / 255.0, test_data.labels),
                      batch_size=64)
    model = tiny_cnn()
    first = evaluate_plain(model, test)
    out = Trainer(model, cfg(epochs=3, lr=0.2), loader, test, tmp_path / "pairs").fit()
    assert out["epoch"] == 3 and out["step"] == 3 * len(loader)
    assert out["test_loss"] < first and 0.0 <= out["test_acc"] <= 1.0

    dicts = [{"pixels": x[i:i + 32], "target": train_data.labels[i:i + 32]}
             for i in range(0, len(x), 32)]

    def loss_fn(m, batch):
        return F.cross_entropy(m(batch["pixels"]), batch["target"])

    m2 = tiny_cnn()
    out2 = Trainer(m2, cfg(epochs=2, schedule="none", warmup_epochs=0.0), dicts, dicts[:2],
                   tmp_path / "dicts", loss_fn=loss_fn).fit()
    assert "train_acc" not in out2 and "test_acc" not in out2
    rows = [r for r in read_metrics(tmp_path / "dicts") if r["event"] == "epoch"]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["train_loss"] < rows[0]["train_loss"]
    with pytest.raises(ConfigError, match="len"):
        Trainer(tiny_cnn(), cfg(), iter(dicts), None, tmp_path / "gen", loss_fn=loss_fn)


def evaluate_plain(model, batches) -> float:
    with torch.no_grad():
        losses = [F.cross_entropy(model(x), y, reduction="sum") for x, y in batches]
    return float(sum(losses)) / sum(len(y) for _, y in batches)


def test_epoch_with_non_finite_test_loss_is_a_diverged_run(tmp_path, train_data, test_data,
                                                           monkeypatch):
    from rankwise.train import trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "evaluate_any",
                        lambda *a, **k: {"test_loss": float("nan"), "test_acc": 0.1})
    t = Trainer(tiny_cnn(), cfg(epochs=1), train_data, test_data, tmp_path)
    with pytest.raises(NonFiniteLossError, match="diverged"):
        t.fit()
    assert not (tmp_path / "checkpoint.pt").exists()
    assert read_metrics(tmp_path) == [r for r in read_metrics(tmp_path) if r["event"] == "step"]


def test_mapping_batches_that_are_not_dicts_are_sized_and_moved(test_data):
    """A Hugging Face collator yields `BatchEncoding`, a Mapping that is not a dict (as
    `UserDict` here): its tensors go to the device and the test loss is weighted by its rows."""
    from collections import UserDict

    from rankwise.train.batches import batch_size_of, evaluate_any, to_device

    x = test_data.images.float() / 255.0
    sizes = (48, 16)  # unequal batches: a per-batch mean would differ from the per-sample one
    batches = [UserDict(pixels=x[:48], target=test_data.labels[:48]),
               UserDict(pixels=x[48:64], target=test_data.labels[48:64])]
    assert [batch_size_of(b) for b in batches] == list(sizes)
    moved = to_device(batches[0], torch.device("cpu"))
    assert set(moved) == {"pixels", "target"} and moved["pixels"] is not None
    model = tiny_cnn().eval()

    def loss_fn(m, batch):
        return F.cross_entropy(m(batch["pixels"]), batch["target"])

    got = evaluate_any(model, batches, loss_fn, 64, torch.device("cpu"))["test_loss"]
    with torch.no_grad():
        want = float(F.cross_entropy(model(x[:64]), test_data.labels[:64]))
    assert got == pytest.approx(want, rel=1e-5)


def test_a_checkpoint_resumed_with_auto_keeps_its_precision(tmp_path, train_data, monkeypatch):
    import rankwise.analysis.precision as precision

    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx2"})  # auto resolves to fp32 here
    with pytest.warns(Warning):  # bf16 is emulated on such a CPU
        Trainer(tiny_cnn(), cfg(epochs=1, precision="bf16"), train_data, None, tmp_path).fit()
    seen = []
    model = tiny_cnn()
    model.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    resumed = Trainer(model, cfg(epochs=2, precision="auto"), train_data, None, tmp_path,
                      lock=False)
    assert resumed.cfg.precision == "fp32"
    resumed.fit(resume=True)
    assert resumed.cfg.precision == "bf16" and seen and set(seen) == {torch.bfloat16}
    with pytest.raises(Exception, match="precision"):  # an explicit other precision is refused
        Trainer(tiny_cnn(), cfg(epochs=3, precision="fp32"), train_data, None, tmp_path,
                lock=False).fit(resume=True)
