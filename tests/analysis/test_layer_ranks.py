"""Rank analysis: spectra of matricized weights and the rank measures derived from them."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rankwise.analysis.layer_ranks import (
    ENERGIES,
    analyze_model,
    spectrum_stats,
    summarize,
    to_markdown,
    weight_spectrum,
)
from rankwise.errors import ConfigError
from rankwise.layers import FactorizedLayer
from rankwise.surgery.decompose import decompose


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return q


def with_spectrum(sigma: list[float], out: int, inp: int, seed: int = 0) -> torch.Tensor:
    """A (out, inp) float64 matrix whose singular values are `sigma` (padded with zeros)."""
    k = len(sigma)
    return orthonormal(out, k, seed) @ torch.diag(torch.tensor(sigma, dtype=torch.float64)) \
        @ orthonormal(inp, k, seed + 1).T


def test_linear_measures_match_hand_computation():
    lin = nn.Linear(6, 5, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(with_spectrum([3.0, 1.0], 5, 6))
    (s,) = analyze_model(nn.Sequential(lin))
    assert s.kind == "linear" and s.max_rank == 5 and s.matrix_shape == (5, 6)
    assert torch.allclose(s.spectrum[:2], torch.tensor([3.0, 1.0], dtype=torch.float64))
    assert s.numerical_rank == 2
    # energies: 9/10 = 0.9 after the first value, 1.0 after two
    assert s.energy_ranks[0.8] == 1 and s.energy_ranks[0.9] == 1
    assert s.energy_ranks[0.95] == 2 and s.energy_ranks[0.99] == 2
    p = [0.75, 0.25]
    assert s.erank == pytest.approx(math.exp(-sum(x * math.log(x) for x in p)), rel=1e-9)
    assert s.stable_rank == pytest.approx(10 / 9, rel=1e-9)
    assert s.tail_energy == pytest.approx(0.1, abs=1e-9)
    assert s.erank_ratio == pytest.approx(s.erank / 5)
    assert s.energy_rank_ratio == pytest.approx(1 / 5)


def test_conv_schemes_have_the_documented_shapes():
    conv = nn.Conv2d(4, 6, (3, 2), bias=False)
    ch = analyze_model(nn.Sequential(conv), "channel")[0]
    sp = analyze_model(nn.Sequential(conv), "spatial")[0]
    assert ch.matrix_shape == (6, 4 * 3 * 2) and ch.max_rank == 6
    assert sp.matrix_shape == (6 * 2, 4 * 3) and sp.max_rank == 12
    w = conv.weight.detach().double()
    expect = torch.linalg.svdvals(w.permute(0, 3, 1, 2).reshape(12, 12))
    assert torch.allclose(sp.spectrum, expect)
    # Frobenius norm is the same in both matricizations
    assert float((ch.spectrum ** 2).sum()) == pytest.approx(float((sp.spectrum ** 2).sum()))


def test_grouped_conv_spectrum_is_union_of_group_spectra():
    conv = nn.Conv2d(4, 6, 3, groups=2, bias=False)
    (s,) = analyze_model(nn.Sequential(conv))
    w = conv.weight.detach().double()
    per_group = [torch.linalg.svdvals(w[3 * g:3 * (g + 1)].reshape(3, -1)) for g in range(2)]
    expect = torch.sort(torch.cat(per_group), descending=True).values
    assert s.groups == 2 and s.max_rank == 6
    assert torch.allclose(s.spectrum, expect)


def test_factorized_layer_listed_once_with_its_rank():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3),
                          nn.Flatten(), nn.LazyLinear(10))
    model(torch.zeros(1, 3, 8, 8))
    dec, _ = decompose(model, format="channel", rank=4, input_shape=(3, 8, 8),
                       linear_format=None, include=["2"])
    stats = analyze_model(dec)
    names = [s.name for s in stats]
    assert names == ["0", "2", "4"]  # no sub-layers of the factorized "2"
    row = stats[1]
    assert isinstance(dec[2], FactorizedLayer) and row.kind == "channel"
    assert row.max_rank == 32 and row.numerical_rank <= 4


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match="scheme"):
        analyze_model(nn.Sequential(nn.Linear(2, 2)), "diagonal")
    with pytest.raises(ConfigError, match="no nn.Conv2d"):
        analyze_model(nn.Sequential(nn.ReLU()))


def test_markdown_and_summary():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 4))
    stats = analyze_model(model)
    md = to_markdown(stats, "T")
    assert md.startswith("# T") and "`0`" in md and "`2`" in md
    summ = summarize(stats)
    assert summ["layers"] == 2
    assert summ["weighted_erank_ratio"] == pytest.approx(
        sum(s.erank for s in stats) / sum(s.max_rank for s in stats))
    d = stats[0].to_dict()
    assert set(d["energy_ranks"]) == {f"{e:g}" for e in ENERGIES} and len(d["spectrum"]) == 8


@settings(max_examples=25, deadline=None)
@given(p=st.integers(1, 12), q=st.integers(1, 12), seed=st.integers(0, 10_000))
def test_measures_are_ordered_and_bounded(p, q, seed):
    w = torch.randn(p, q, generator=torch.Generator().manual_seed(seed))
    s = spectrum_stats("x", "linear", w)
    assert s.max_rank == min(p, q)
    assert 1.0 - 1e-9 <= s.erank <= s.numerical_rank + 1e-9
    assert 1.0 - 1e-9 <= s.stable_rank <= s.erank + 1e-6  # stable rank ≤ effective rank
    ranks = [s.energy_ranks[e] for e in ENERGIES]
    assert ranks == sorted(ranks) and 1 <= ranks[0] and ranks[-1] <= s.max_rank
    assert 0.0 <= s.tail_energy <= 0.1 + 1e-9
    assert torch.allclose(weight_spectrum(w), torch.linalg.svdvals(w.double()))


def test_non_finite_weight_is_refused_naming_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    with torch.no_grad():
        model[2].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ConfigError, match=r"^2: weight contains NaN"):
        analyze_model(model)
