"""Resume is exact: 2 epochs straight == 1 epoch + new Trainer + resume + 1 epoch (bitwise, CPU)."""

import torch

from rankwise.train import Hook, TrainConfig, Trainer
from tests.train.helpers import tiny_cnn


class StepCounter(Hook):
    """Stateful hook: counts steps and can stop training after a given epoch."""

    def __init__(self, stop_after: int | None = None):
        self.steps = 0
        self.stop_after = stop_after

    def after_step(self, trainer, step):
        self.steps += 1

    def on_epoch_end(self, trainer, epoch, metrics):
        if self.stop_after is not None and epoch + 1 == self.stop_after:
            trainer.should_stop = True

    def state_dict(self):
        return {"steps": self.steps, "marker": torch.arange(3.0)}

    def load_state_dict(self, state):
        assert torch.equal(state["marker"], torch.arange(3.0))
        self.steps = state["steps"]


def make_cfg() -> TrainConfig:
    # augmentation, label smoothing, Nesterov, warm-up + cosine: every piece of state matters
    return TrainConfig(epochs=2, batch_size=24, lr=0.05, nesterov=True, schedule="cosine",
                       warmup_epochs=0.5, label_smoothing=0.1, augment=True, seed=3, quiet=True,
                       wd_on_bn_bias=False)


def test_resume_is_bitwise_identical(tmp_path, train_data, test_data):
    straight = tiny_cnn(seed=1, dropout=0.2)
    hook_a = StepCounter()
    ta = Trainer(straight, make_cfg(), train_data, test_data, tmp_path / "a", hooks=[hook_a])
    out_a = ta.fit()

    first = tiny_cnn(seed=1, dropout=0.2)
    Trainer(first, make_cfg(), train_data, test_data, tmp_path / "b",
            hooks=[StepCounter(stop_after=1)]).fit()
    torch.manual_seed(12345)  # disturb the global RNG: resume must restore it
    resumed = tiny_cnn(seed=7, dropout=0.2)  # other init: the checkpoint must overwrite it
    hook_b = StepCounter()
    tb = Trainer(resumed, make_cfg(), train_data, test_data, tmp_path / "b", hooks=[hook_b])
    out_b = tb.fit(resume=True)

    sa, sb = straight.state_dict(), resumed.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for pa, pb in zip(ta.optimizer.param_groups, tb.optimizer.param_groups, strict=True):
        assert pa["lr"] == pb["lr"]
        for a, b in zip(pa["params"], pb["params"], strict=True):
            assert torch.equal(ta.optimizer.state[a]["momentum_buffer"],
                               tb.optimizer.state[b]["momentum_buffer"])
    assert hook_b.steps == hook_a.steps == ta.global_step == tb.global_step
    assert out_a["test_loss"] == out_b["test_loss"]
    assert out_a["train_loss"] == out_b["train_loss"]


def test_resume_of_a_finished_run_trains_nothing(tmp_path, train_data, test_data):
    model = tiny_cnn()
    Trainer(model, make_cfg(), train_data, test_data, tmp_path).fit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    again = tiny_cnn(seed=9)
    out = Trainer(again, make_cfg(), train_data, test_data, tmp_path).fit(resume=True)
    assert out["epoch"] == 2 and "test_acc" in out
    assert all(torch.equal(before[k], v) for k, v in again.state_dict().items())


def test_resume_with_other_hooks_is_refused(tmp_path, train_data):
    import pytest

    from rankwise.errors import CheckpointError

    Trainer(tiny_cnn(), make_cfg(), train_data, None, tmp_path, hooks=[StepCounter(1)]).fit()
    with pytest.raises(CheckpointError, match="hooks"):
        Trainer(tiny_cnn(), make_cfg(), train_data, None, tmp_path).fit(resume=True)
    with pytest.raises(CheckpointError, match="architecture"):
        Trainer(tiny_cnn(bn=False), make_cfg(), train_data, None, tmp_path,
                hooks=[StepCounter()]).fit(resume=True)
