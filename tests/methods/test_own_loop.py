"""The public method objects in a plain PyTorch loop give exactly what `rankwise train
--method NAME` (the `Trainer` + recipe) gives: TRP, ELRT, SFW; AMP ordering, gradient
accumulation, state_dict."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import rankwise
from rankwise.methods.trp_config import TRPConfig
from tests.methods.loops import (
    SHAPE,
    assert_same_weights,
    batches,
    data,
    own_loop,
    sgd,
    tiny,
    trainer_run,
)

torch.set_num_threads(1)


def test_trp_own_loop_equals_trainer_factorized(tmp_path):
    cfg = TRPConfig(energy=0.8, nuclear_weight=1e-3)
    ref = trainer_run(tmp_path, "trp", cfg, tiny())
    model = tiny()
    trp = rankwise.TRP(model, energy=0.8, nuclear_weight=1e-3)
    own_loop(model, trp, sgd(model))
    assert_same_weights(model, ref.model)
    small, report = trp.finalize(model)  # input shape seen by the first forward
    loaded = rankwise.load(tmp_path / "factorized", model=tiny())
    assert_same_weights(small, loaded)
    assert report["layers"] and any(r["format"] == "channel" for r in report["layers"])
    assert trp.state_dict() == ref.hooks[0].method.state_dict()


def test_elrt_own_loop_equals_trainer(tmp_path):
    from rankwise.methods.elrt import ELRTConfig

    cfg = ELRTConfig(rank="ratio:0.5", seed=0, orth_weight=1e-2)
    ref = trainer_run(tmp_path, "elrt", cfg, tiny())
    elrt = rankwise.ELRT.build(tiny(), cfg, input_shape=SHAPE)
    own_loop(elrt.model, elrt, sgd(elrt.model))
    assert_same_weights(elrt.model, ref.model)
    _, report = elrt.finalize()
    assert report["params"] == sum(p.numel() for p in ref.model.parameters())


def test_sfw_own_loop_equals_trainer(tmp_path):
    from rankwise.methods import CompressionMethod, SFWConfig

    cfg = SFWConfig(k=2, width=1.0, sweep_ratios=(0.0, 0.5))
    ref = trainer_run(tmp_path, "sfw", cfg, tiny(), weight_decay=0.0)
    model = tiny()
    opt = rankwise.build_sfw(model, 0.05, cfg, seed=0)
    own_loop(model, CompressionMethod(), opt)  # SFW is the optimizer: nothing else to call
    assert_same_weights(model, ref.model)
    test = data()[1]
    report = rankwise.sfw_finalize(model, opt, cfg, test, input_shape=SHAPE)
    assert report["feasibility"]["feasible"]
    got = [(r["ratio"], r["acc"]) for r in report["sweeps"]["lowrank"]]
    assert got == [(r["ratio"], r["acc"]) for r in ref.report["sweeps"]["lowrank"]]


def _trp_loop(model, trp, scaler=None, wrong_order=False):
    opt = sgd(model)
    for step, (x, y) in enumerate(batches(1)):
        trp.before_forward(step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            trp.after_backward(step)
            opt.step()
            continue
        scaler.scale(loss).backward()
        if wrong_order:
            trp.after_backward(step)  # λ·S would be divided by the scale
        scaler.unscale_(opt)
        if not wrong_order:
            trp.after_backward(step)
        scaler.step(opt)
        scaler.update()


def test_amp_grad_scaler_after_unscale_matches_trainer_bf16(tmp_path):
    cfg = TRPConfig(nuclear_weight=5e-2)
    ref = trainer_run(tmp_path, "trp", cfg, tiny(), epochs=1, precision="bf16")
    plain = tiny()
    _trp_loop(plain, rankwise.TRP(plain, cfg))
    assert_same_weights(plain, ref.model)
    scaled = tiny()
    _trp_loop(scaled, rankwise.TRP(scaled, cfg), torch.amp.GradScaler("cpu", init_scale=2.0**10))
    assert_same_weights(scaled, plain)  # power-of-two scaling is exact
    wrong = tiny()
    _trp_loop(wrong, rankwise.TRP(wrong, cfg), torch.amp.GradScaler("cpu", init_scale=2.0**10),
              wrong_order=True)
    assert not torch.allclose(wrong.body.weight, plain.body.weight, atol=1e-6)


def test_gradient_accumulation_applies_the_nuclear_step_once_per_optimizer_step():
    cfg = TRPConfig(nuclear_weight=5e-2)

    def run(micro: int, backward_calls_after_each: bool) -> torch.nn.Module:
        model = tiny()
        trp, opt = rankwise.TRP(model, cfg), sgd(model)
        for step, (x, y) in enumerate(batches(1)):
            opt.zero_grad(set_to_none=True)
            for xs, ys in zip(x.chunk(micro), y.chunk(micro), strict=True):
                trp.before_forward(step)  # every micro-batch: truncates once per step
                loss = F.cross_entropy(model(xs), ys) * (xs.shape[0] / x.shape[0])
                loss.backward()
                if backward_calls_after_each:
                    trp.after_backward(step)  # called per micro-batch: still applied once
            trp.after_backward(step)
            opt.step()
        return model, trp

    full, trp_full = run(1, False)
    accum, trp_accum = run(2, False)
    eager, _ = run(2, True)
    assert_same_weights(eager, accum, atol=1e-6)  # twice would be λ·lr·S ≈ 2.5e-3 off
    assert_same_weights(accum, full, atol=1e-5)  # micro-batch sums differ only by rounding
    assert trp_accum.trp_steps == trp_full.trp_steps == len(batches(1))


def test_state_dict_round_trip_resumes_exactly():
    cfg = TRPConfig(period=2, nuclear_weight=1e-2)
    data = batches(1)

    def steps(model, trp, opt, rng):
        for step in rng:
            x, y = data[step]
            trp.before_forward(step)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            trp.after_backward(step)
            opt.step()

    straight = tiny()
    t1, o1 = rankwise.TRP(straight, cfg), sgd(straight)
    steps(straight, t1, o1, range(len(data)))
    half = tiny()
    t2, o2 = rankwise.TRP(half, cfg), sgd(half)
    steps(half, t2, o2, range(1))
    saved = copy.deepcopy({"model": half.state_dict(), "opt": o2.state_dict(),
                           "trp": t2.state_dict()})
    resumed = tiny(7)
    resumed.load_state_dict(saved["model"])
    t3, o3 = rankwise.TRP(resumed, cfg), sgd(resumed)
    o3.load_state_dict(saved["opt"])
    t3.load_state_dict(saved["trp"])
    steps(resumed, t3, o3, range(1, len(data)))
    assert_same_weights(resumed, straight)
    assert t3.state_dict() == t1.state_dict()


def test_finalize_without_a_forward_needs_the_input_shape():
    from rankwise.errors import ConfigError

    trp = rankwise.TRP(tiny())
    with pytest.raises(ConfigError, match="input_shape"):
        trp.finalize()
    small, _ = trp.finalize(input_shape=SHAPE)
    assert small(torch.zeros(1, *SHAPE)).shape == (1, 5)


def test_trp_on_a_model_called_with_keyword_token_inputs():
    """A Hugging Face style loop calls `model(**batch)` with token ids: `finalize` counts MACs
    on one sample of what the first forward got (nothing to pass), and an explicit
    `example_inputs` works before any forward."""
    from collections import UserDict

    from torch import nn

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.fc = nn.Embedding(20, 32), nn.Linear(32, 32)
            self.head = nn.Linear(32, 4)

        def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None):
            return self.head(torch.relu(self.fc(self.emb(input_ids))).mean(1))

    torch.manual_seed(0)
    model = Tokens()
    fresh = rankwise.TRP(copy.deepcopy(model), energy=0.9, include_linear=True)
    small, report = fresh.finalize(example_inputs={"input_ids": torch.zeros(1, 6,
                                                                            dtype=torch.long)})
    assert report["input_shape"] == [6]
    trp = rankwise.TRP(model, energy=0.9, include_linear=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        batch = UserDict(input_ids=torch.randint(0, 20, (8, 6)), labels=torch.randint(0, 4, (8,)))
        trp.before_forward(step)
        loss = F.cross_entropy(model(**batch), batch["labels"])
        opt.zero_grad()
        loss.backward()
        trp.after_backward(step)
        opt.step()
    small, report = trp.finalize()
    assert report["input_shape"] == [6]  # one sample of the first batch's ids
    assert report["counting"]["rankwise"]["macs_before"] == 6 * 32 * 32 + 32 * 4
    assert small(input_ids=torch.randint(0, 20, (2, 6))).shape == (2, 4)
