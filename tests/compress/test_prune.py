import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from rankwise.compress import (
    filter_norms,
    filter_prune,
    magnitude_prune,
    sparsity_report,
    stage_stats,
)
from rankwise.errors import ConfigError, UnsupportedLayerError


class TwoStage(nn.Module):
    """A 'factorized' conv as two plain child convs, as factorized layers hold them."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(8, 3, (3, 1), padding=(1, 0), bias=False)
        self.last = nn.Conv2d(3, 12, (1, 3), padding=(0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.first(x))


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        TwoStage(),
        nn.ReLU(),
        nn.Conv2d(12, 16, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{n}.weight": m.weight.detach().clone()
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


@settings(max_examples=25, deadline=None)
@given(amount=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_layer_scope_exact_fraction_and_smallest(amount, seed):
    model = tiny_net(seed)
    before = weights(model)
    pruned, report = magnitude_prune(model, amount, scope="layer")
    after = weights(pruned)
    assert set(before) == {r.name for r in report.rows} == set(after)
    for row in report.rows:
        w0, w1 = before[row.name], after[row.name]
        k = max(round(amount * w0.numel()), int((w0 == 0).sum()))
        assert row.total == w0.numel()
        assert row.zeros == k == int((w1 == 0).sum())
        removed = w1 == 0
        # Kept entries are untouched; every removed |w| <= every kept |w|.
        assert torch.equal(w1[~removed], w0[~removed])
        if 0 < k < w0.numel():
            assert w0[removed].abs().max() <= w0[~removed].abs().min()
    # The input model is untouched (inplace=False) and the state dict is plain.
    assert all(torch.equal(before[k], v) for k, v in weights(model).items())
    assert not any(k.endswith(("_orig", "_mask")) for k in pruned.state_dict())


@settings(max_examples=25, deadline=None)
@given(amount=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
@example(amount=0.0, seed=479)  # this init draws one weight that is exactly 0.0
def test_global_scope_exact_fraction_and_smallest(amount, seed):
    model = tiny_net(seed)
    before = torch.cat([w.flatten() for w in weights(model).values()])
    pruned, report = magnitude_prune(model, amount, scope="global")
    after = torch.cat([w.flatten() for w in weights(pruned).values()])
    # Weights that are already exactly zero (a random init can draw 0.0) count as pruned.
    k = max(round(amount * before.numel()), int((before == 0).sum()))
    assert report.total == before.numel()
    assert report.zeros == k == int((after == 0).sum())
    assert report.fraction == pytest.approx(k / before.numel())
    removed = after == 0
    if 0 < k < before.numel():
        assert before[removed].abs().max() <= before[~removed].abs().min()
    assert torch.equal(after[~removed], before[~removed])


def test_global_differs_from_layer_and_biases_untouched():
    model = tiny_net(1)
    with torch.no_grad():  # make the linear much larger so global pruning spares it
        model[8].weight.mul_(100)
    g, rg = magnitude_prune(model, 0.5, scope="global")
    fractions = {r.name: r.fraction for r in rg.rows}
    assert fractions["8.weight"] == 0.0
    assert torch.equal(g[8].bias, model[8].bias)
    _, rl = magnitude_prune(model, 0.5, scope="layer")
    assert {r.name: r.fraction for r in rl.rows}["8.weight"] == 0.5


def test_pruning_tops_up_and_include_exclude():
    model = tiny_net(2)
    p1, _ = magnitude_prune(model, 0.3, scope="layer", include=["3.*"])
    rep = sparsity_report(p1)
    by = {r.name: r for r in rep.rows}
    assert by["0.weight"].zeros == 0 and by["3.first.weight"].zeros > 0
    p2, r2 = magnitude_prune(p1, 0.6, scope="layer", exclude=["8"])
    by2 = {r.name: r for r in r2.rows}
    assert "8.weight" not in by2
    assert by2["3.first.weight"].zeros == round(0.6 * by2["3.first.weight"].total)
    # Pruned-first entries stay pruned.
    assert bool(((p1[3].first.weight == 0) <= (p2[3].first.weight == 0)).all())


def test_prune_errors():
    with pytest.raises(ConfigError):
        magnitude_prune(tiny_net(), 1.5)
    with pytest.raises(ConfigError):
        magnitude_prune(tiny_net(), 0.5, scope="row")
    with pytest.raises(UnsupportedLayerError):
        magnitude_prune(tiny_net(), 0.5, include=["nothing.here"])


@settings(max_examples=25, deadline=None)
@given(amount=st.floats(0.0, 1.0), norm=st.sampled_from([1, 2]), seed=st.integers(0, 1000))
def test_filter_prune_zeroes_whole_smallest_filters(amount, norm, seed):
    model = tiny_net(seed)
    before = weights(model)
    pruned, report = filter_prune(model, amount, norm=norm, input_shape=(3, 8, 8))
    convs = [n for n in before if n != "8.weight"]
    assert [f"{r.name}.weight" for r in report.rows] == convs
    mods = dict(pruned.named_modules())
    for row in report.rows:
        w0, w1 = before[f"{row.name}.weight"], mods[row.name].weight.detach()
        n = w0.shape[0]
        k = round(amount * n)
        dead = (w1.flatten(1) == 0).all(dim=1)
        assert row.pruned_filters == k == int(dead.sum())
        assert torch.equal(w1[~dead], w0[~dead])  # whole filters or nothing
        norms = filter_norms(w0, norm)
        if 0 < k < n:
            assert norms[dead].max() <= norms[~dead].min()
        if mods[row.name].bias is not None:
            assert bool((mods[row.name].bias.detach()[dead] == 0).all())
        per_filter = w0[0].numel() + (1 if mods[row.name].bias is not None else 0)
        assert row.effective_params == (n - k) * per_filter
        assert row.effective_macs * n == row.macs * (n - k)
    assert torch.equal(pruned[8].weight, model[8].weight)  # the classifier is never pruned


def test_filter_prune_macs_by_hand():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 3, 3) + 1)
    pruned, rep = filter_prune(model, 0.5, input_shape=(2, 5, 5))
    row = rep.rows[0]
    assert row.macs == 5 * 5 * 4 * 2 * 9 and row.effective_macs == 5 * 5 * 2 * 2 * 9
    assert row.effective_params == 2 * 18
    assert bool((pruned[0].weight[:2] == 0).all()) and bool((pruned[0].weight[2:] != 0).all())


def test_stage_stats_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0, 0, 1, 1] = 1.0  # 1 of 18 conv weights nonzero
    s = stage_stats(model, (1, 4, 4))
    conv_macs, lin_macs = 4 * 4 * 2 * 1 * 9, 32 * 3
    assert s["macs"] == conv_macs + lin_macs
    assert s["nonzero_macs"] == 16 * 1 + lin_macs
    assert s["params"] == 18 + 2 + 96 + 3
    assert s["weight_params"] == 18 + 96
    assert s["nonzero_weight_params"] == 1 + int(model[2].weight.count_nonzero())
    assert s["bytes_fp32"] == 4 * s["params"]
    assert s["bytes_int8"] == (18 + 96) + 4 * (2 + 3) + 4 * (2 + 3)
    assert model.training  # mode restored


def test_stage_stats_tracks_pruning():
    model = tiny_net(3)
    dense = stage_stats(model, (3, 8, 8))
    pruned, rep = magnitude_prune(model, 0.75, scope="layer")
    s = stage_stats(pruned, (3, 8, 8))
    assert s["macs"] == dense["macs"] and s["params"] == dense["params"]
    assert s["nonzero_weight_params"] == rep.total - rep.zeros
    assert s["sparsity"] == pytest.approx(rep.fraction)
    assert s["nonzero_macs"] < 0.3 * dense["macs"]
