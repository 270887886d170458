"""`erank-reg`: the spectral regularizers, their gradients, the hook and the Method contract."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rankwise.analysis.layer_ranks import analyze_model
from rankwise.errors import ConfigError
from rankwise.methods.erank_reg import (
    EffectiveRankRegularizer,
    ERankRegConfig,
    erank_measure,
    spectral_penalty,
)
from rankwise.train.recipes import get_recipe

METHOD = get_recipe("erank-reg")


def diag_linear(d: list[float]) -> nn.Linear:
    lin = nn.Linear(len(d), len(d), bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.diag(torch.tensor(d, dtype=torch.float64)))
    return lin


def hand_erank_and_grad(d: list[float]) -> tuple[float, list[float]]:
    """erank = exp(H), p = σ/S; d erank/dσ_i = −erank·(log p_i + H)/S."""
    s = sum(d)
    p = [x / s for x in d]
    h = -sum(x * math.log(x) for x in p)
    e = math.exp(h)
    return e, [-e * (math.log(pi) + h) / s for pi in p]


@pytest.mark.parametrize("d", [[3.0, 2.0, 1.0], [0.5, 4.0, 1.5, 1.0]])
def test_erank_value_and_gradient_on_diagonal_matrix(d):
    lin = diag_linear(d)
    loss = spectral_penalty(nn.Sequential(lin), "erank")
    loss.backward()
    e, grad = hand_erank_and_grad(d)
    assert float(loss.detach()) == pytest.approx(e, rel=1e-10)
    g = lin.weight.grad
    # W = diag(d) with d > 0: dσ_i/dW = e_i e_iᵀ, so the gradient is diag(d erank/dσ_i)
    assert torch.allclose(torch.diagonal(g), torch.tensor(grad, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(g - torch.diag(torch.diagonal(g)), torch.zeros_like(g), atol=1e-10)


def test_l1_type_measures_and_gradients_on_diagonal_matrix():
    d = [3.0, 2.0, 1.0]
    s, n2, top = sum(d), math.sqrt(sum(x * x for x in d)), max(d)
    lin = diag_linear(d)
    nuc = spectral_penalty(nn.Sequential(lin), "nuclear")
    nuc.backward()
    assert float(nuc.detach()) == pytest.approx(s / n2, rel=1e-12)
    expect = [1 / n2 - s * x / n2 ** 3 for x in d]  # d(S/‖σ‖₂)/dσ_i
    assert torch.allclose(torch.diagonal(lin.weight.grad), torch.tensor(expect).double(),
                          atol=1e-10)
    lin = diag_linear(d)
    l1 = spectral_penalty(nn.Sequential(lin), "l1sv")
    l1.backward()
    assert float(l1.detach()) == pytest.approx(s / top, rel=1e-12)
    expect = [1 / top - s / top ** 2, 1 / top, 1 / top]  # d(S/σ_max)/dσ_i, σ_max = d[0]
    assert torch.allclose(torch.diagonal(lin.weight.grad), torch.tensor(expect).double(),
                          atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(p=st.integers(1, 8), q=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_measures_lie_in_their_ranges(p, q, seed):
    w = torch.randn(p, q, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    s = torch.linalg.svdvals(w)
    r = min(p, q)
    assert 1 - 1e-9 <= float(erank_measure(s)) <= r + 1e-9
    lin = nn.Linear(q, p, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(w)
    m = nn.Sequential(lin)
    with torch.no_grad():
        assert 1 - 1e-9 <= float(spectral_penalty(m, "nuclear")) <= math.sqrt(r) + 1e-9
        assert 1 - 1e-9 <= float(spectral_penalty(m, "l1sv")) <= r + 1e-9
        assert float(spectral_penalty(m, "erank", normalize=True)) <= 1 + 1e-9


def test_penalty_sums_over_conv_and_linear_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, groups=1), nn.Conv2d(4, 4, 3, groups=2),
                          nn.Flatten(), nn.Linear(4, 2))
    total = float(spectral_penalty(model, "erank").detach())
    expect = sum(s.erank for s in analyze_model(model))  # per-group union for the grouped conv
    assert total == pytest.approx(expect, rel=1e-5)
    convs = float(spectral_penalty(model, "erank", include_linear=False).detach())
    assert convs == pytest.approx(expect - analyze_model(model)[-1].erank, rel=1e-5)
    with pytest.raises(ConfigError, match="no nn.Conv2d"):
        spectral_penalty(nn.Sequential(nn.Linear(2, 2)), include_linear=False)


def test_object_scales_and_respects_period():
    model = nn.Sequential(nn.Linear(4, 3))
    reg = EffectiveRankRegularizer(model, weight=0.5, period=2)
    reg.before_forward(0)
    loss = reg.penalty()
    assert float(loss.detach()) == pytest.approx(
        0.5 * float(spectral_penalty(model).detach()), rel=1e-6)
    reg.before_forward(1)
    assert reg.penalty() is None
    state = reg.state_dict()
    fresh = EffectiveRankRegularizer(model)
    fresh.load_state_dict(state)
    assert fresh.step == 1 and fresh.last_penalty == pytest.approx(state["last_penalty"])
    assert EffectiveRankRegularizer(model, weight=0.0).penalty() is None
    with pytest.raises(ConfigError, match="no nn.Conv2d"):
        EffectiveRankRegularizer(model, include_linear=False)


def test_method_contract_and_flags():
    assert METHOD.name == "erank-reg" and METHOD.config_cls is ERankRegConfig
    parser = argparse.ArgumentParser()
    METHOD.add_arguments(parser)
    args = parser.parse_args(["--reg", "nuclear", "--reg-weight", "0.25", "--erank-reg-period",
                              "3", "--erank-reg-no-linear"])
    cfg = METHOD.config_from_args(args)
    assert cfg == ERankRegConfig(measure="nuclear", weight=0.25, include_linear=False, period=3)
    assert METHOD.config_from_dict(METHOD.config_to_dict(cfg)) == cfg
    assert len(METHOD.hooks(cfg)) == 1 and METHOD.make_optimizer(None, None, cfg) is None
    taken = argparse.ArgumentParser()
    taken.add_argument("--reg")  # another method owns the short alias: prefixed flags still work
    METHOD.add_arguments(taken)
    assert taken.parse_args(["--erank-reg-measure", "l1sv"]).erank_reg_measure == "l1sv"
    with pytest.raises(ConfigError, match="measure"):
        ERankRegConfig(measure="entropy")
    with pytest.raises(ConfigError, match="period"):
        ERankRegConfig(period=0)


def _train(reg_weight: float, steps: int = 100) -> nn.Module:
    """A small MLP on a fixed random 4-class task, SGD, seed 0."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    y = (x[:, :4].sum(1) > 0).long() + 2 * (x[:, 4:8].sum(1) > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    reg = EffectiveRankRegularizer(model, weight=reg_weight)
    for step in range(steps):
        reg.before_forward(step)
        idx = torch.randint(0, 256, (64,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        extra = reg.penalty()
        if extra is not None:
            loss = loss + extra
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_short_run_with_regularizer_lowers_erank():
    plain = sum(s.erank for s in analyze_model(_train(0.0)))
    reg = sum(s.erank for s in analyze_model(_train(0.02)))
    assert reg < 0.8 * plain


def test_trainer_run_and_finalize_report(tmp_path):
    from rankwise.data import load_dataset
    from rankwise.train import TrainConfig, Trainer

    train = load_dataset("synthetic", train=True, size=64, shape=(3, 8, 8), num_classes=4)
    test = load_dataset("synthetic", train=False, size=32, shape=(3, 8, 8), num_classes=4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4))
    cfg = ERankRegConfig(weight=0.01)
    hooks = METHOD.hooks(cfg)
    trainer = Trainer(model, TrainConfig(epochs=1, batch_size=32, lr=0.05, quiet=True,
                                         schedule="none"), train, test, tmp_path, hooks=hooks)
    trainer.fit()
    reg = hooks[0].method
    assert reg.last_penalty is not None and reg.step == trainer.global_step - 1
    summary = METHOD.finalize(trainer, cfg)
    assert summary["measure"] == "erank" and summary["layers"] == 2
    assert (tmp_path / "erank_report.json").is_file() and (tmp_path / "erank_report.md").is_file()
