"""SFW on a model that takes token ids, in a plain loop: `sfw_finalize` sweeps its linears with
the caller's evaluation and counts MACs at the sequence length of the example batch."""

from __future__ import annotations

from collections import UserDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rankwise
from rankwise.errors import ConfigError
from rankwise.methods import SFWConfig

VOCAB, DIM, CLASSES = 20, 16, 4


class TinyTokenModel(nn.Module):
    """Embedding → linear per token → mean over tokens → classifier: `model(input_ids=...)`."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, DIM)
        self.mix = nn.Linear(DIM, DIM)
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.mix(self.emb(input_ids))) * attention_mask[..., None]
        return self.head(h.sum(1) / attention_mask.sum(1, keepdim=True))


def _batch(tokens: int, n: int = 32, seed: int = 0) -> tuple[UserDict, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, tokens), generator=gen)
    return UserDict({"input_ids": ids, "attention_mask": torch.ones_like(ids)}), ids[:, 0] % 4


def test_sfw_finalize_sweeps_a_token_model_with_the_callers_evaluation() -> None:
    model = TinyTokenModel()
    cfg = SFWConfig(k=0.25, width=1.0, include_linear=True, sweep_ratios=(0.0, 0.5))
    opt = rankwise.build_sfw(model, 0.1, cfg, seed=0)
    for step in range(20):  # the user's own loop: SFW is the optimizer
        batch, y = _batch(8, seed=step)
        loss = F.cross_entropy(model(**batch), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    test, labels = _batch(8, n=64, seed=99)
    calls = []

    def evaluate_fn(m: nn.Module) -> dict[str, float]:
        calls.append(m)
        with torch.no_grad():
            return {"acc": float((m(**test).argmax(1) == labels).float().mean()), "loss": 0.0}

    short, _ = _batch(8, n=2)
    report = rankwise.sfw_finalize(model, opt, cfg, example_inputs=short, evaluate_fn=evaluate_fn)
    rows = report["sweeps"]["lowrank"]
    assert [r["ratio"] for r in rows] == [0.0, 0.5] and len(calls) == 3  # dense + 2 ratios
    assert rows[0]["acc"] == evaluate_fn(model)["acc"]
    assert rows[1]["factorized_layers"] >= 1 and rows[1]["macs"] < rows[0]["macs"]
    # MACs per sample: the token-wise linear runs once per token, the classifier once
    long, _ = _batch(16, n=2)
    longer = rankwise.sfw_sweep(model, None, cfg, example_inputs=long, evaluate_fn=evaluate_fn)
    grows = longer["lowrank"][0]["macs_dense"] - rows[0]["macs_dense"]
    assert grows == 8 * DIM * DIM  # 8 more tokens through `mix`; `head` unchanged


def test_sfw_sweep_names_what_it_is_missing() -> None:
    model, cfg = TinyTokenModel(), SFWConfig(include_linear=True)
    with pytest.raises(ConfigError, match="example_inputs="):
        rankwise.sfw_sweep(model, None, cfg, evaluate_fn=lambda m: {"acc": 0.0})
    with pytest.raises(ConfigError, match="evaluate_fn="):
        rankwise.sfw_sweep(model, None, cfg, example_inputs=_batch(4)[0])
