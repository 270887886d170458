"""Variance-matching init: the effective dense weight has the Kaiming variance, outputs match."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rankwise.errors import ConfigError, UnsupportedLayerError
from rankwise.layers import FORMATS
from rankwise.layers.init import init_dense_, init_factorized_, kaiming_std, orthonormal
from rankwise.layers.shapes import ConvSpec, LinearSpec
from rankwise.methods.regularizers import gram_deviation, orthogonal_factors

CONV = ConvSpec(48, 40, (3, 3), padding=(1, 1), bias=False)
CASES = [  # (format, spec, rank, samples)
    ("tucker2", CONV, (12, 10), 8),
    ("tucker2", ConvSpec(32, 48, (3, 3), padding=(1, 1), groups=4), (6, 4), 8),
    ("channel", CONV, 12, 8),
    ("spatial", ConvSpec(48, 40, (3, 5), padding=(1, 2)), 12, 8),
    ("cp", ConvSpec(32, 32, (3, 3), padding=(1, 1)), 32, 400),
    ("cp", ConvSpec(8, 6, (3, 3), padding=(1, 1)), 20, 600),  # R > n, c: orthonormal rows
    ("svd", LinearSpec(96, 80), 20, 8),
    ("tt", LinearSpec(64, 64), (8, 8), 60),
]


def _weights(fmt, spec, rank, n, mode="fan_in", dist="normal"):
    gen = torch.Generator().manual_seed(123)
    for _ in range(n):
        layer = FORMATS[fmt].from_spec(spec, rank, dtype=torch.float64)
        init_factorized_(layer, mode=mode, distribution=dist, generator=gen)
        yield layer


def _torch_kaiming_var(spec, mode: str) -> float:
    """Empirical variance of torch's own kaiming_normal_ on the dense weight (independent)."""
    torch.manual_seed(0)
    w = spec.make().weight.detach().double()
    reps = max(1, 2_000_000 // w.numel())
    total = 0.0
    for _ in range(reps):
        nn.init.kaiming_normal_(w, mode=mode, nonlinearity="relu")
        total += float(w.pow(2).mean())
    return total / reps


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_kaiming_std_agrees_with_torch(mode):
    for spec in (CONV, ConvSpec(32, 48, (3, 3), groups=4), LinearSpec(96, 80)):
        assert kaiming_std(spec, mode) ** 2 == pytest.approx(_torch_kaiming_var(spec, mode),
                                                             rel=0.03)


@pytest.mark.parametrize("fmt,spec,rank,n", CASES, ids=[f"{c[0]}-{i}" for i, c in
                                                        enumerate(CASES)])
def test_effective_weight_has_kaiming_variance(fmt, spec, rank, n):
    target = kaiming_std(spec, "fan_in") ** 2
    ms = torch.stack([layer.dense_weight().detach().pow(2).mean()
                      for layer in _weights(fmt, spec, rank, n)])
    rel = abs(float(ms.mean()) / target - 1)
    assert rel < 0.05, (fmt, float(ms.mean()), target)


def test_fan_out_and_uniform_targets():
    spec = ConvSpec(24, 48, (3, 3), padding=(1, 1))
    target = kaiming_std(spec, "fan_out") ** 2
    assert target == pytest.approx(2 / (48 * 9))
    for dist in ("normal", "uniform"):
        ms = [float(m.dense_weight().detach().pow(2).mean())
              for m in _weights("tucker2", spec, (12, 12), 8, mode="fan_out", dist=dist)]
        assert sum(ms) / len(ms) == pytest.approx(target, rel=0.05)
    layer = next(_weights("channel", spec, 6, 1, dist="uniform"))
    bound = math.sqrt(3) * math.sqrt(kaiming_std(spec, "fan_in") ** 2 * 48 / 6)
    assert float(layer.first.weight.detach().abs().max()) <= bound + 1e-12


def test_tt_fallback_when_cores_cannot_be_left_orthonormal():
    spec = LinearSpec(16, 4)
    opts = {"in_modes": (2, 2, 2, 2), "out_modes": (1, 1, 2, 2)}
    gen = torch.Generator().manual_seed(0)
    target = kaiming_std(spec, "fan_in") ** 2
    ms = []
    for _ in range(3000):
        layer = FORMATS["tt"].from_spec(spec, (1, 4, 4), dtype=torch.float64, **opts)
        init_factorized_(layer, generator=gen)
        ms.append(float(layer.dense_weight().detach().pow(2).mean()))
    assert sum(ms) / len(ms) == pytest.approx(target, rel=0.1)


@pytest.mark.parametrize("fmt,rank", [("tucker2", (16, 16)), ("channel", 16), ("spatial", 24),
                                      ("cp", 48)])
def test_output_std_matches_dense_layer(fmt, rank):
    spec = ConvSpec(64, 64, (3, 3), padding=(1, 1), bias=False)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(4, 64, 12, 12, generator=gen, dtype=torch.float64)
    dense_std, fact_std = [], []
    for seed in range(6):
        torch.manual_seed(seed)
        dense = spec.make().double()
        nn.init.kaiming_normal_(dense.weight, mode="fan_in", nonlinearity="relu")
        layer = FORMATS[fmt].from_spec(spec, rank, dtype=torch.float64)
        init_factorized_(layer, generator=gen)
        with torch.no_grad():
            dense_std.append(float(dense(x).std()))
            fact_std.append(float(layer(x).std()))
    ratio = sum(fact_std) / sum(dense_std)
    assert ratio == pytest.approx(1.0, abs=0.1)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 12), seed=st.integers(0, 100))
def test_orthonormal_is_orthonormal(rows, cols, seed):
    q = orthonormal(rows, cols, torch.Generator().manual_seed(seed))
    assert q.shape == (rows, cols)
    assert float(gram_deviation(q)) < 1e-20


@settings(max_examples=25, deadline=None)
@given(fmt=st.sampled_from(["tucker2", "channel", "spatial", "cp"]), g=st.integers(1, 2),
       c=st.integers(1, 4), n=st.integers(1, 4), k=st.integers(1, 3), frac=st.floats(0.1, 1.0))
def test_basis_factors_orthonormal_after_init(fmt, g, c, n, k, frac):
    spec = ConvSpec(g * c, g * n, (k, k), padding=(k // 2, k // 2), groups=g)
    cls = FORMATS[fmt]
    rank = tuple(max(1, int(frac * m)) for m in cls.max_rank(spec))
    layer = cls.from_spec(spec, rank if len(rank) > 1 else rank[0], dtype=torch.float64)
    init_factorized_(layer, generator=torch.Generator().manual_seed(0))
    mats = orthogonal_factors(layer)
    assert mats, fmt
    assert max(float(gram_deviation(u.detach())) for u in mats) < 1e-20


@pytest.mark.parametrize(("fmt", "spec", "rank"), [
    ("tucker2", CONV, (8, 6)), ("channel", CONV, 8), ("spatial", CONV, 8), ("cp", CONV, 8),
    ("channel", ConvSpec(8, 12, (3, 3), groups=2), 3), ("svd", LinearSpec(48, 40), 8),
    ("tt", LinearSpec(48, 40), (4, 4))])
def test_every_elrt_format_has_orthonormal_basis_factors_after_init(fmt, spec, rank):
    """The factors the orthogonality penalty reads exist for every format ELRT trains in, are
    orthonormal after init, and are views of the parameters (its gradient reaches them)."""
    layer = FORMATS[fmt].from_spec(spec, rank, dtype=torch.float64)
    init_factorized_(layer, generator=torch.Generator().manual_seed(0))
    mats = orthogonal_factors(layer)
    assert mats and max(float(gram_deviation(u.detach())) for u in mats) < 1e-20
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(1.5)  # no longer orthonormal: the penalty grows and has a gradient
    sum(gram_deviation(u) for u in orthogonal_factors(layer)).backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in layer.parameters())


def test_bias_and_dense_init():
    spec = ConvSpec(16, 8, (3, 3), bias=True)
    layer = init_factorized_(FORMATS["tucker2"].from_spec(spec, (4, 4)))
    assert float(layer.bias.detach().abs().max()) <= 1 / math.sqrt(16 * 9)
    conv = init_dense_(nn.Conv2d(256, 256, 3), mode="fan_out")
    assert float(conv.weight.detach().std()) == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.02)


def test_errors():
    with pytest.raises(ConfigError):
        kaiming_std(CONV, "fan_avg")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        init_factorized_(FORMATS["channel"].from_spec(CONV, 4), distribution="cauchy")  # type: ignore[arg-type]
    with pytest.raises(UnsupportedLayerError):
        init_factorized_(nn.Conv2d(3, 3, 3))  # type: ignore[arg-type]
