"""`RankwiseTrainerCallback`: TRP / ELRT inside a Hugging Face `Trainer` give what
`rankwise train --method NAME` gives on the same model, data order and seed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rankwise
from rankwise.methods.elrt import ELRTConfig
from rankwise.methods.trp_config import TRPConfig
from tests.integrations.frameworks import import_or_skip
from tests.methods.loops import SHAPE, assert_same_weights, batches, sgd, tiny, trainer_run

torch.set_num_threads(1)


class Wrap(nn.Module):
    """HF's calling convention: keyword inputs in, a dict with "loss" out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits.float(), labels), "logits": logits}


class Batches(torch.utils.data.IterableDataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __iter__(self):
        for x, y in self.items:
            yield {"x": x, "labels": y}


def hf_train(tmp_path, net: nn.Module, method, opt) -> None:
    tr = import_or_skip("transformers.trainer")
    args_mod = import_or_skip("transformers.training_args")
    hf = import_or_skip("rankwise.integrations.huggingface")
    items = batches()
    args = args_mod.TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=1, max_steps=len(items),
        max_grad_norm=0.0, report_to=[], use_cpu=True, save_strategy="no",
        logging_strategy="no", seed=0, disable_tqdm=True, dataloader_num_workers=0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    trainer = tr.Trainer(model=Wrap(net), args=args, train_dataset=Batches(items),
                         data_collator=lambda rows: rows[0], optimizers=(opt, sched),
                         callbacks=[hf.RankwiseTrainerCallback(method)])
    trainer.train()


def test_trp_in_hf_trainer_matches_rankwise_train(tmp_path):
    cfg = TRPConfig(energy=0.8, nuclear_weight=1e-3)
    ref = trainer_run(tmp_path / "ref", "trp", cfg, tiny())
    net = tiny()
    trp = rankwise.TRP(net, cfg)
    hf_train(tmp_path, net, trp, sgd(net))
    assert_same_weights(net, ref.model, atol=1e-6)
    small, _ = trp.finalize(net, input_shape=SHAPE)
    loaded = rankwise.load(tmp_path / "ref" / "factorized", model=tiny())
    assert [type(m).__name__ for m in small.modules()] == \
        [type(m).__name__ for m in loaded.modules()]
    assert_same_weights(small, loaded, atol=1e-5)


def test_elrt_penalty_through_the_callback(tmp_path):
    cfg = ELRTConfig(rank="ratio:0.5", seed=0, orth_weight=1e-2)
    ref = trainer_run(tmp_path / "ref", "elrt", cfg, tiny())
    elrt = rankwise.ELRT.build(tiny(), cfg, input_shape=SHAPE)
    hf_train(tmp_path, elrt.model, elrt, sgd(elrt.model))
    assert elrt.last_penalty is not None
    assert_same_weights(elrt.model, ref.model, atol=1e-5)


def test_callback_state_passes_through():
    hf = import_or_skip("rankwise.integrations.huggingface")
    trp = rankwise.TRP(tiny())
    cb = hf.RankwiseTrainerCallback(trp)
    trp.before_forward(0)
    other = hf.RankwiseTrainerCallback(rankwise.TRP(tiny(3)))
    other.load_state_dict(cb.state_dict())
    assert other.state_dict() == cb.state_dict() and cb.state_dict()["trp_steps"] == 1


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning",
                                        "ignore::FutureWarning")
