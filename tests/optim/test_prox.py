"""Prox-SGD: the nuclear-norm prox is SVT (by hand and by optimality), and the optimizer step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rankwise.errors import ConfigError
from rankwise.optim import ProxSGD, prox_nuclear, prox_param_groups, svt

D = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_svt_by_hand_on_a_known_decomposition() -> None:
    """W = U diag(3, 1, 0.2) Vᵀ (hand-built orthonormal U, V); τ = 0.5 → U diag(2.5, .5, 0) Vᵀ."""
    c, s = 0.6, 0.8
    u = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=D)
    v = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
                     dtype=D)  # (4, 3) orthonormal columns
    w = u @ torch.diag(torch.tensor([3.0, 1.0, 0.2], dtype=D)) @ v.T
    expect = u @ torch.diag(torch.tensor([2.5, 0.5, 0.0], dtype=D)) @ v.T
    assert torch.allclose(svt(w, 0.5), expect, atol=1e-12)
    assert torch.allclose(svt(w, 0.0), w, atol=1e-12)
    assert torch.allclose(svt(w, 10.0), torch.zeros_like(w))


def test_prox_is_the_minimizer_of_the_prox_objective() -> None:
    """½‖X − W‖² + τ‖X‖_* is smallest at SVT(W, τ) among random perturbations of it."""
    w = torch.randn(5, 3, 2, 2, generator=gen(0), dtype=D)
    tau = 0.7

    def obj(x: torch.Tensor) -> float:
        return float(0.5 * (x - w).square().sum()
                     + tau * torch.linalg.svdvals(x.flatten(1)).sum())

    x = prox_nuclear(w, tau)
    assert x.shape == w.shape
    best = obj(x)
    g = gen(1)
    for scale in (1e-1, 1e-2, 1e-3):
        for _ in range(60):
            assert best <= obj(x + scale * torch.randn(w.shape, generator=g, dtype=D)) + 1e-12
    # optimality condition: W − X = τ·(U_r V_rᵀ + E) with ‖E‖₂ ≤ 1, i.e. ‖W − X‖₂ ≤ τ
    assert float(torch.linalg.matrix_norm((w - x).flatten(1), ord=2)) <= tau * (1 + 1e-9)


def test_proxsgd_step_is_sgd_then_svt() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3)
    ref_w, ref_b = conv.weight.detach().clone(), conv.bias.detach().clone()
    opt = ProxSGD(prox_param_groups(conv, 0.05), lr=0.1, momentum=0.9)
    g = gen(2)
    grads = [(torch.randn(conv.weight.shape, generator=g), torch.randn(6, generator=g))
             for _ in range(2)]
    buf_w = buf_b = None
    for gw, gb in grads:
        conv.weight.grad, conv.bias.grad = gw.clone(), gb.clone()
        opt.step()
        buf_w = gw if buf_w is None else 0.9 * buf_w + gw
        buf_b = gb if buf_b is None else 0.9 * buf_b + gb
        ref_w = svt((ref_w - 0.1 * buf_w).flatten(1), 0.1 * 0.05).view(ref_w.shape)
        ref_b = ref_b - 0.1 * buf_b
    assert torch.allclose(conv.weight, ref_w, atol=1e-5)
    assert torch.allclose(conv.bias, ref_b, atol=1e-6)
    assert len(opt.last_ranks) == 1 and 1 <= opt.last_ranks[0] <= 6


def test_large_threshold_makes_weights_low_rank_and_zero_weight_is_sgd() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 8, 3)
    opt = ProxSGD(prox_param_groups(conv, 2.0), lr=0.1)
    s0 = torch.linalg.svdvals(conv.weight.detach().flatten(1))
    conv.weight.grad = torch.zeros_like(conv.weight)
    opt.step()
    s1 = torch.linalg.svdvals(conv.weight.detach().flatten(1))
    assert torch.allclose(s1, (s0 - 0.2).clamp_min(0), atol=1e-5)
    lin = nn.Linear(3, 2)
    before = lin.weight.detach().clone()
    lin.weight.grad = torch.ones_like(lin.weight)
    ProxSGD(lin.parameters(), lr=0.5).step()
    assert torch.allclose(lin.weight, before - 0.5)


def test_errors() -> None:
    with pytest.raises(ConfigError):
        svt(torch.ones(3), 0.1)
    with pytest.raises(ConfigError):
        svt(torch.ones(2, 2), -1.0)
    with pytest.raises(ConfigError):
        prox_nuclear(torch.ones(3), 0.1)
    with pytest.raises(ConfigError, match="momentum"):
        ProxSGD([nn.Parameter(torch.ones(2))], momentum=1.0)
