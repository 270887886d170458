"""`RankwiseCallback`: TRP inside a Lightning `Trainer` gives what `rankwise train --method trp`
gives on the same model, data order and seed (skipped when Lightning does not import)."""

from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import rankwise
from rankwise.methods.trp_config import TRPConfig
from tests.integrations.frameworks import import_or_skip
from tests.methods.loops import SHAPE, assert_same_weights, batches, sgd, tiny, trainer_run

torch.set_num_threads(1)


def test_trp_in_lightning_matches_rankwise_train(tmp_path):
    pl = import_or_skip("lightning.pytorch")
    cb_mod = import_or_skip("rankwise.integrations.lightning")
    cfg = TRPConfig(energy=0.8, nuclear_weight=1e-3)
    ref = trainer_run(tmp_path / "ref", "trp", cfg, tiny())
    net = tiny()
    items = batches()

    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x).float(), y)

        def configure_optimizers(self):
            return sgd(self.net)

    trp = rankwise.TRP(net, cfg)
    loader = torch.utils.data.DataLoader(items, batch_size=None, shuffle=False)
    trainer = pl.Trainer(max_steps=len(items), max_epochs=1, accelerator="cpu", devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path),
                         callbacks=[cb_mod.RankwiseCallback(trp)])
    trainer.fit(Lit(), train_dataloaders=loader)
    assert_same_weights(net, ref.model, atol=1e-6)
    small, _ = trp.finalize(net, input_shape=SHAPE)
    loaded = rankwise.load(tmp_path / "ref" / "factorized", model=tiny())
    assert_same_weights(small, loaded, atol=1e-5)


class Counting(rankwise.CompressionMethod):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def before_forward(self, step: int) -> None:
        self.calls.append(("before_forward", step))

    def after_backward(self, step: int) -> None:
        self.calls.append(("after_backward", step))

    def after_step(self, step: int) -> None:
        self.calls.append(("after_step", step))


def test_call_order_under_accumulation_with_a_stub_lightning(monkeypatch):
    """Lightning's documented order (batch start per micro-batch; before_optimizer_step after
    unscaling, once per step; global_step counts optimizer steps), without Lightning."""
    for name in ("lightning", "lightning.pytorch"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    stub = types.ModuleType("lightning.pytorch.callbacks")
    stub.Callback = object
    monkeypatch.setitem(sys.modules, "lightning.pytorch.callbacks", stub)
    sys.modules.pop("rankwise.integrations.lightning", None)
    try:
        mod = importlib.import_module("rankwise.integrations.lightning")
        method = Counting()
        cb = mod.RankwiseCallback(method)
        trainer = types.SimpleNamespace(global_step=0)
        for idx in range(4):  # accumulate_grad_batches = 2
            cb.on_train_batch_start(trainer, None, None, idx)
            if idx % 2 == 1:
                cb.on_before_optimizer_step(trainer, None, None)
                trainer.global_step += 1
            cb.on_train_batch_end(trainer, None, None, None, idx)
    finally:
        sys.modules.pop("rankwise.integrations.lightning", None)
    assert method.calls == [("before_forward", 0), ("before_forward", 0), ("after_backward", 0),
                            ("after_step", 0), ("before_forward", 1), ("before_forward", 1),
                            ("after_backward", 1), ("after_step", 1)]
    assert cb.state_dict() == {}


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
