"""SFW optimizer: step-size rescales by hand, momentum styles, feasibility, state dict, low rank."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from rankwise.errors import CheckpointError, ConfigError
from rankwise.linalg.spectra import effective_rank, singular_values
from rankwise.optim import (
    CONSTRAINTS,
    SFW,
    L2Ball,
    NuclearBall,
    SpectralKSupportBall,
    Unconstrained,
    make_constraint,
    make_param_groups,
    shift_model_to_feasible,
)


def one_step(rescale, lr: float, theta=(0.6, 0.0), grad=(3.0, 4.0)) -> torch.Tensor:
    """θ after one SFW step on the unit L2 ball (D = 2) without momentum."""
    p = nn.Parameter(torch.tensor(theta, dtype=torch.float64))
    p.grad = torch.tensor(grad, dtype=torch.float64)
    SFW([p], lr=lr, momentum=0.0, rescale=rescale, constraint=L2Ball(radius=1.0)).step()
    return p.detach()


def test_rescale_formulas_by_hand() -> None:
    # g = (3, 4): ‖g‖ = 5, v = −g/5 = (−0.6, −0.8); θ − v = (1.2, 0.8), ‖θ − v‖ = √2.08
    v = torch.tensor([-0.6, -0.8], dtype=torch.float64)
    theta = torch.tensor([0.6, 0.0], dtype=torch.float64)
    expected_eta = {
        None: 0.1,                       # factor 1
        "diameter": 0.1 / 2.0,           # factor 1/D
        "fast_gradient": 0.1 * 5 / 1.0,  # factor ‖g‖/(D/2)
        "gradient": 0.1 * 5 / math.sqrt(2.08),
    }
    for rescale, eta in expected_eta.items():
        torch.testing.assert_close(one_step(rescale, 0.1), (1 - eta) * theta + eta * v)
    # by hand: None → 0.9·(0.6, 0) + 0.1·(−0.6, −0.8) = (0.48, −0.08)
    by_hand = torch.tensor([0.48, -0.08], dtype=torch.float64)
    torch.testing.assert_close(one_step(None, 0.1), by_hand)
    # fast_gradient, lr 1: factor 5 clamps η to 1, so θ jumps to the vertex
    torch.testing.assert_close(one_step("fast_gradient", 1.0), v)
    # "None" (string, as in the reference configs) is accepted
    torch.testing.assert_close(one_step("None", 0.1), one_step(None, 0.1))
    # zero gradient with the 'gradient' rescale: no move and no NaN
    torch.testing.assert_close(one_step("gradient", 0.1, grad=(0.0, 0.0)), theta)


def test_momentum_styles_and_reset() -> None:
    g1, g2 = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    for style, expected in (("heavy_ball", 0.9 * g1 + g2), ("ema", 0.9 * g1 + 0.1 * g2)):
        p = nn.Parameter(torch.zeros(2))
        opt = SFW([p], lr=0.1, momentum=0.9, momentum_style=style, constraint=L2Ball(radius=1.0))
        for g in (g1, g2):
            p.grad = g.clone()
            opt.step()
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], expected)
        opt.reset_momentum()
        assert "momentum_buffer" not in opt.state[p]
        p.grad = g1.clone()
        opt.step()
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], g1)  # restarts at grad


def test_unconstrained_group_takes_sgd_step_and_group_grads() -> None:
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    a.grad = torch.tensor([1.0, 2.0, 3.0])
    opt = SFW([{"params": [a], "constraint": Unconstrained(), "lr": 0.5},
               {"params": [b], "constraint": L2Ball(radius=1.0)}], momentum=0.0)
    opt.step()
    torch.testing.assert_close(a.detach(), torch.tensor([0.5, 0.0, -0.5]))
    torch.testing.assert_close(b.detach(), torch.ones(2))  # no grad in its group: skipped
    # a parameter without grad in a group with gradients shrinks towards v = 0 on its part
    c, d = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.full((2,), 0.5))
    c.grad = torch.tensor([1.0, 0.0])
    SFW([c, d], lr=0.5, momentum=0.0, rescale=None, constraint=L2Ball(radius=2.0)).step()
    torch.testing.assert_close(d.detach(), torch.full((2,), 0.25))
    torch.testing.assert_close(c.detach(), torch.tensor([-1.0, 0.0]))


def test_invalid_configuration() -> None:
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError):
        SFW([p])  # no constraint
    for kw in ({"rescale": "norm"}, {"momentum_style": "nesterov"}, {"momentum": 1.0},
               {"lr": -0.1}):
        with pytest.raises(ConfigError):
            SFW([p], constraint=L2Ball(radius=1.0), **kw)


@pytest.mark.parametrize("name", [c for c in CONSTRAINTS if c != "unconstrained"])
def test_iterates_stay_feasible(name: str) -> None:
    shape = (6, 4, 3, 3)
    gen = torch.Generator().manual_seed(0)
    c = make_constraint(name, shape, k=0.5, radius=0.8, steps=4)
    p = nn.Parameter(c.shift_to_feasible(5 * torch.randn(shape, generator=gen)))
    rescales = ("gradient", "fast_gradient", "diameter", None)
    opt = SFW([p], lr=0.9, momentum=0.9, momentum_style="ema", rescale=rescales[len(name) % 4],
              constraint=c)
    for _ in range(60):
        p.grad = torch.randn(shape, generator=gen) + 0.3
        opt.step()
        assert c.norm(p) <= c.radius * (1 + 1e-5), name
    assert torch.isfinite(p).all()


def _model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 4 * 4, 3))
    x = torch.randn(8, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    return model, x, y


def _train(model, opt, x, y, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_state_dict_round_trip_resumes_identically() -> None:
    model, x, y = _model_and_data()
    groups = make_param_groups(model, "spectral-k-support", k=0.5, width=3.0, samples=2,
                               method="power")  # the warm-started path has LMO state
    shift_model_to_feasible(model, groups)
    opt = SFW(groups, lr=0.2, momentum=0.9)
    _train(model, opt, x, y, 3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    saved = opt.state_dict()
    assert saved["param_groups"][0]["constraint"]["name"] == "spectral-k-support"
    assert "lmo_basis" in opt.state[model[0].weight]  # warm start is checkpointed

    clone, _, _ = _model_and_data()
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # only tensors and builtins inside
    clone.load_state_dict(ckpt["model"])
    groups2 = make_param_groups(clone, "spectral-k-support", k=0.5, width=3.0, samples=2,
                                method="power")
    opt2 = SFW(groups2, lr=0.2, momentum=0.9)
    opt2.load_state_dict(ckpt["opt"])
    assert all(isinstance(g["constraint"], type(h["constraint"]))
               for g, h in zip(opt2.param_groups, groups, strict=True))
    _train(model, opt, x, y, 2)
    _train(clone, opt2, x, y, 2)
    for a, b in zip(model.parameters(), clone.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)

    wrong = SFW(make_param_groups(clone, "nuclear", width=3.0, samples=2), lr=0.2)
    with pytest.raises(CheckpointError):
        wrong.load_state_dict(ckpt["opt"])


def test_spectral_balls_end_with_lower_effective_rank_than_sgd() -> None:
    """Noisy multi-output regression with a rank-2 truth: SGD fits the noise (full rank),
    SFW in a nuclear / spectral-2-support ball sized to the truth stays close to rank 2."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 20, generator=gen)
    w_true = 0.5 * torch.randn(10, 2, generator=gen) @ torch.randn(2, 20, generator=gen)
    y = x @ w_true.T + 0.5 * torch.randn(128, 10, generator=gen)
    sigma = torch.linalg.svdvals(w_true)

    def run(make_opt) -> tuple[float, float]:
        torch.manual_seed(1)
        model = nn.Linear(20, 10)
        opt = make_opt(model)
        for _ in range(200):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
        return float(loss.detach()), effective_rank(singular_values(model.weight.detach()))

    sgd_loss, sgd_erank = run(lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9))

    def sfw(constraint):
        def make(m):
            groups = [{"params": [m.weight], "constraint": constraint},
                      {"params": [m.bias], "constraint": L2Ball(radius=1.0)}]
            shift_model_to_feasible(m, groups)
            return SFW(groups, lr=0.1, momentum=0.9)
        return make

    for c in (NuclearBall(radius=float(sigma.sum())),
              SpectralKSupportBall(10, 2, radius=float(sigma[:2].norm()))):
        loss, erank = run(sfw(c))
        assert erank < sgd_erank - 0.3, (c.name, erank, sgd_erank)
        assert loss < 1.5 * sgd_loss, (c.name, loss, sgd_loss)
