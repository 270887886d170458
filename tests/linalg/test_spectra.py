"""Rank measures on spectra: hand-computed values, edge cases, properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankwise.errors import ConfigError, RankError
from rankwise.linalg.spectra import (
    effective_rank,
    energy_curve,
    energy_rank,
    numerical_rank,
    ratio_rank,
    singular_values,
    stable_rank,
    value_threshold_rank,
)

S321 = torch.tensor([3.0, 2.0, 1.0])  # σ² = 9, 4, 1; total 14


def test_energy_curve_hand_computed():
    c = energy_curve(S321)
    assert c.dtype == torch.float64
    assert torch.allclose(c, torch.tensor([9 / 14, 13 / 14, 1.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "e, r",
    [(0.5, 1), (9 / 14, 1), (0.65, 2), (0.9, 2), (13 / 14, 2), (0.93, 3), (1.0, 3)],
)
def test_energy_rank_hand_computed(e, r):
    assert energy_rank(S321, e) == r


def test_energy_rank_ignores_input_order():
    assert energy_rank(torch.tensor([1.0, 3.0, 2.0]), 0.9) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_energy_one_is_numerical_rank(dtype):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 3, generator=g, dtype=dtype)
    m = a @ torch.randn(3, 32, generator=g, dtype=dtype)
    s = torch.linalg.svdvals(m)  # the tail is rounding noise, not exactly zero
    assert s[3:].max() > 0
    assert numerical_rank(s) == 3
    assert energy_rank(s, 1.0) == 3
    assert energy_rank(singular_values(m), 1.0) == 3


def test_zero_spectrum_conventions():
    z = torch.zeros(5)
    assert energy_rank(z, 0.9) == 1
    assert energy_rank(z, 1.0) == 1
    assert value_threshold_rank(z, 0.0) == 5  # every σ = 0 satisfies σ >= 0
    assert value_threshold_rank(z, 0.05) == 1
    assert effective_rank(z) == 1.0
    assert stable_rank(z) == 1.0
    assert torch.equal(energy_curve(z), torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize("t, r", [(0.0, 3), (1.0, 3), (2.0, 2), (2.5, 1), (3.0, 1), (10.0, 1)])
def test_value_threshold_rank(t, r):
    assert value_threshold_rank(S321, t) == r


def test_ratio_rank():
    assert ratio_rank(10, 0.25) == 2
    assert ratio_rank(10, 0.01) == 1
    assert ratio_rank(7, 1.0) == 7
    assert ratio_rank(64, 0.5) == 32
    # plain truncation as in SFW's sweep: 0.29 * 100 = 28.999999999999996
    assert ratio_rank(100, 0.29) == 28


def test_effective_rank_hand_computed():
    assert effective_rank(torch.tensor([1.0, 1.0])) == pytest.approx(2.0)
    assert effective_rank(torch.tensor([1.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(torch.ones(4)) == pytest.approx(4.0)
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2, erank = 2^1.5
    assert effective_rank(torch.tensor([2.0, 1.0, 1.0])) == pytest.approx(2**1.5)
    assert effective_rank(torch.tensor([2.0, 1.0, 1.0]) * 7.5) == pytest.approx(2**1.5)


def test_stable_rank_hand_computed():
    assert stable_rank(torch.tensor([4.0, 3.0])) == pytest.approx(25 / 16)
    assert stable_rank(torch.tensor([3.0, 4.0])) == pytest.approx(25 / 16)
    assert stable_rank(torch.ones(6)) == pytest.approx(6.0)
    assert stable_rank(S321) == pytest.approx(14 / 9)


def test_singular_values_dtype_and_values():
    q1, _ = torch.linalg.qr(torch.randn(5, 3, generator=torch.Generator().manual_seed(1)))
    q2, _ = torch.linalg.qr(torch.randn(4, 3, generator=torch.Generator().manual_seed(2)))
    m = (q1 * torch.tensor([3.0, 2.0, 1.0])) @ q2.T
    s = singular_values(m)
    assert s.dtype == torch.float32 and s.shape == (4,)
    assert torch.allclose(s, torch.tensor([3.0, 2.0, 1.0, 0.0]), atol=1e-5)
    assert singular_values(torch.randn(2, 6, 5)).shape == (2, 5)


def test_invalid_inputs():
    with pytest.raises(ConfigError):
        energy_rank(S321, 0.0)
    with pytest.raises(ConfigError):
        energy_rank(S321, 1.01)
    with pytest.raises(ConfigError):
        ratio_rank(10, 0.0)
    with pytest.raises(ConfigError):
        ratio_rank(10, 1.5)
    with pytest.raises(ConfigError):
        value_threshold_rank(S321, -0.1)
    with pytest.raises(RankError, match="NaN"):
        energy_rank(torch.tensor([1.0, float("nan")]), 0.9)
    with pytest.raises(RankError):
        effective_rank(torch.ones(2, 2))
    with pytest.raises(RankError):
        stable_rank(torch.tensor([]))
    with pytest.raises(RankError):
        effective_rank(torch.tensor([1.0, -1.0]))


spectra = st.lists(
    st.floats(min_value=0.0, max_value=1e3, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=40,
).map(lambda v: torch.tensor(sorted(v, reverse=True), dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(s=spectra, e1=st.floats(0.01, 1.0), e2=st.floats(0.01, 1.0))
def test_energy_rank_properties(s, e1, e2):
    lo, hi = sorted((e1, e2))
    r_lo, r_hi = energy_rank(s, lo), energy_rank(s, hi)
    assert 1 <= r_lo <= r_hi <= s.numel()
    c = energy_curve(s)
    assert bool((c[1:] >= c[:-1]).all()) and float(c[-1]) == 1.0
    if float(s.max()) > 0:
        assert float(c[r_hi - 1]) >= hi - 1e-9 or r_hi == numerical_rank(s)
        if r_hi > 1:  # minimality: one less does not reach the threshold
            assert float(c[r_hi - 2]) < hi


@settings(max_examples=25, deadline=None)
@given(s=spectra)
def test_erank_and_stable_rank_bounds(s):
    nonzero = max(1, int((s > 0).sum()))
    er, sr = effective_rank(s), stable_rank(s)
    assert 1.0 - 1e-9 <= er <= nonzero + 1e-9
    assert 1.0 - 1e-9 <= sr <= nonzero + 1e-9
    assert not math.isnan(er) and not math.isnan(sr)
