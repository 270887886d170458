"""TRP fidelity to the reference code: energy on σ or σ², the ND (network decoupling) scheme,
and the reference's counting (only stride-1 convs decomposed, FLOPs per output pixel)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rankwise.layers import ConvSpec
from rankwise.layers.decoupled_conv import DecoupledConv2d
from rankwise.linalg.spectra import energy_rank
from rankwise.methods.trp import TRP
from rankwise.methods.trp_ops import trp_project

torch.set_num_threads(1)


def test_energy_on_sigma_vs_sigma2_by_hand():
    # σ = 3, 2, 1 → σ² shares 9/14, 13/14, 1; σ shares 3/6, 5/6, 1. At e = 0.9: r = 2 vs 3.
    w = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)).unsqueeze(0)
    assert trp_project(w, 0.9, power=2)[2].tolist() == [2]
    assert trp_project(w, 0.9, power=1)[2].tolist() == [3]
    assert trp_project(w, 0.8, power=1)[2].tolist() == [2]
    model = nn.Sequential(nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(w[0])
    trp = TRP(model, include_linear=True, energy=0.9, energy_on="sigma", nuclear_weight=0.0)
    trp.before_forward(0)
    assert trp.last_ranks == {"0": 3}
    assert torch.equal(model[0].weight, w[0].float())  # rank 3 keeps everything


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 32, 3, padding=1)
        self.down = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.down(torch.relu(self.body(torch.relu(self.stem(x))))))
        return self.fc(x.mean(dim=(2, 3)))


def net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def test_nd_step_cuts_every_filter_to_its_energy_rank():
    model = net()
    before = model.body.weight.detach().clone()
    trp = TRP(model, scheme="nd", energy=0.6, nuclear_weight=1e-2)
    trp.before_forward(0)
    ranks = []
    for i in range(32):
        m = before[i].double().reshape(16, 9)
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        r = energy_rank(s, 0.6)
        ranks.append(r)
        after = model.body.weight[i].detach().double().reshape(16, 9)
        torch.testing.assert_close(after, (u[:, :r] * s[:r]) @ vh[:r], atol=1e-5, rtol=1e-4)
    assert trp.last_ranks["body"] == max(ranks) and min(ranks) < 9
    model.body.weight.grad = torch.zeros_like(model.body.weight)
    trp.after_backward(0)
    u, _, vh = torch.linalg.svd(model.body.weight[0].detach().double().reshape(16, 9),
                                full_matrices=False)
    r0 = ranks[0]
    sub = (u[:, :r0] @ vh[:r0]).reshape(16, 3, 3)
    torch.testing.assert_close(model.body.weight.grad[0].double(), 1e-2 * sub, atol=1e-5,
                               rtol=1e-4)


def test_nd_finalize_builds_decoupled_layers_with_the_reference_flops():
    model = net(1)
    trp = TRP(model, scheme="nd", decompose_rank="fixed:2", counting="reference")
    small, report = trp.finalize(model, input_shape=(3, 8, 8))
    assert isinstance(small.body, DecoupledConv2d) and small.body.rank == 2
    assert isinstance(small.down, nn.Conv2d)  # stride 2: the reference never decomposes it
    rows = {r["name"]: r for r in report["layers"]}
    assert rows["body"]["trp_flops_after"] == (32 * 16 + 32 * 9) * 2 * 64  # (n·c + n·k²)·r·HW
    assert rows["body"]["trp_flops_before"] == 32 * 16 * 9 * 64
    ref = report["counting"]["reference"]
    dense_rest = 16 * 3 * 9 * 64 + 32 * 32 * 9 * 16  # stem + down, dense
    assert ref["flops_before"] == dense_rest + 32 * 16 * 9 * 64
    assert ref["flops_after"] == dense_rest + (32 * 16 + 32 * 9) * 2 * 64
    assert report["speedup"] == pytest.approx(ref["flops_before"] / ref["flops_after"])


def test_rankwise_counting_decomposes_strided_convs_too():
    model = net(2)
    for counting, strided in (("rankwise", True), ("reference", False), ("trp", False)):
        trp = TRP(model, decompose_rank="fixed:2", counting=counting)
        small, report = trp.finalize(model, input_shape=(3, 8, 8))
        assert (type(small.down).__name__ == "ChannelLowRankConv2d") is strided, counting
        assert report["config"]["counting"] == ("rankwise" if strided else "reference")


def test_nd_post_training_rank_is_the_max_over_filters():
    model = net(3).double()
    trp = TRP(model, scheme="nd", energy=0.6, nuclear_weight=0.0)
    trp.before_forward(0)  # each filter cut to its own energy rank
    w = model.body.weight.detach()
    expected = max(energy_rank(torch.linalg.svdvals(w[i].reshape(16, 9)), 0.85)
                   for i in range(32))
    pooled = energy_rank(DecoupledConv2d.spectra(w, ConvSpec.from_conv(model.body))[0], 0.85)
    assert expected != pooled  # the two rules differ on this layer
    small, report = TRP(model, scheme="nd", decompose_rank="energy:0.85").finalize(
        model, input_shape=(3, 8, 8))
    assert isinstance(small.body, DecoupledConv2d) and small.body.rank == expected
    assert "max over filters" in report["policy"]
