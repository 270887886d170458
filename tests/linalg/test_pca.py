"""Centred PCA of (t, D) sample matrices: orthonormality, agreement with numpy, variances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankwise.errors import RankError
from rankwise.linalg.pca import METHODS, pca

torch.set_num_threads(1)


def numpy_pca(x: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: eigenvectors of the D × D sample covariance (what PCA is by definition)."""
    xc = x - x.mean(axis=0)
    cov = xc.T @ xc / (x.shape[0] - 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:d]
    return evecs[:, order].T, evals[order]


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=25, deadline=None)
@given(t=st.integers(3, 12), dim=st.integers(12, 40), seed=st.integers(0, 2**16))
def test_directions_orthonormal_and_match_numpy(method, t, dim, seed):
    rng = np.random.default_rng(seed)
    # a trajectory-like matrix: a drift plus decaying random directions, distinct variances
    scales = 2.0 ** -np.arange(t)
    x = (rng.standard_normal((t, t)) * scales) @ rng.standard_normal((t, dim))
    d = max(1, min(t - 1, dim) // 2)
    res = pca(torch.from_numpy(x).float(), d, method=method)
    p = res.components.double()
    assert p.shape == (d, dim) and res.mean.shape == (dim,)
    assert torch.allclose(p @ p.T, torch.eye(d, dtype=torch.float64), atol=1e-5)
    ref_vecs, ref_vals = numpy_pca(x, d)
    gaps = np.abs(np.diff(np.concatenate([ref_vals, [0.0]])))
    if gaps.min() < 1e-3 * ref_vals[0]:  # near-ties make single directions ill-defined
        return
    signs = np.sign(np.sum(p.numpy() * ref_vecs, axis=1))  # up to sign per direction
    np.testing.assert_allclose(p.numpy() * signs[:, None], ref_vecs, atol=2e-3)
    np.testing.assert_allclose(res.explained_variance.numpy(), ref_vals, rtol=1e-3)
    np.testing.assert_allclose(res.mean.numpy(), x.mean(axis=0), rtol=1e-4, atol=1e-5)


def test_explained_variance_by_hand():
    # samples (0,0,0), (2,0,0), (1,2,0): mean (1, 2/3, 0); centred rows
    # (-1,-2/3,0), (1,-2/3,0), (0,4/3,0). Covariance (ddof 1) = diag(1, 4/3) in (e1, e2),
    # total variance 7/3, principal direction e2 (4/3 > 1), then e1.
    x = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    for method in METHODS:
        res = pca(x, 2, method=method)
        assert torch.allclose(res.explained_variance, torch.tensor([4 / 3, 1.0],
                                                                   dtype=torch.float64))
        assert torch.allclose(res.explained_variance_ratio,
                              torch.tensor([4 / 7, 3 / 7], dtype=torch.float64))
        assert res.total_ratio == pytest.approx(1.0)
        assert torch.allclose(res.components.abs(), torch.tensor([[0.0, 1.0, 0.0],
                                                                  [1.0, 0.0, 0.0]],
                                                                 dtype=torch.float64), atol=1e-12)
        assert torch.allclose(res.singular_values.square(),
                              torch.tensor([8 / 3, 2.0], dtype=torch.float64))
        # sign convention: the largest-magnitude entry of every component is positive
        assert (res.components.max(dim=1).values > 0).all()


def test_svd_and_gram_agree_on_long_samples_streamed_in_chunks():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5000, generator=gen) * torch.tensor([5.0, 4, 3, 2, 1, 0.5])[:, None]
    a = pca(x, 4, method="svd")
    b = pca(x, 4, method="gram", chunk=777)  # chunk does not divide D
    assert torch.allclose(a.components, b.components, atol=1e-4)
    assert torch.allclose(a.explained_variance_ratio, b.explained_variance_ratio, atol=1e-6)
    assert a.components.dtype == torch.float32


def test_rank_errors_name_the_fix():
    x = torch.randn(4, 10)
    with pytest.raises(RankError, match="t - 1"):
        pca(x, 4)  # 4 centred samples span at most 3 directions
    same = torch.ones(5, 10)
    with pytest.raises(RankError, match="span only 0"):
        pca(same, 1, method="gram")
    line = torch.arange(5.0)[:, None] * torch.ones(1, 10)  # samples on a line: 1 direction
    with pytest.raises(RankError, match="span only 1"):
        pca(line, 2)
    with pytest.raises(RankError, match="method"):
        pca(x, 1, method="eig")
