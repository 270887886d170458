"""Partial Tucker-2 (HOSVD / HOOI) on the channel modes of a conv weight."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankwise.linalg.tucker import (
    mode_spectra,
    partial_tucker2,
    tucker2_core,
    tucker2_reconstruct,
    unfold,
)


def _weight(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _discarded(s: torch.Tensor, r: int) -> float:
    return float(s[r:].pow(2).sum())


def test_unfold_by_hand():
    w = torch.arange(2 * 3 * 2 * 1, dtype=torch.float64).reshape(2, 3, 2, 1)
    u1 = unfold(w, 1)
    assert u1.shape == (3, 4)
    # row i of the mode-1 unfolding holds w[:, i] (all out channels and kernel positions)
    assert torch.equal(u1[1], torch.stack([w[0, 1, 0, 0], w[0, 1, 1, 0],
                                           w[1, 1, 0, 0], w[1, 1, 1, 0]]))


@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (3, 5, 1, 2), (2, 7, 3, 1), (9, 1, 2, 2)])
def test_full_rank_is_exact(shape):
    w = _weight(shape)
    n, c, kh, kw = shape
    ranks = (min(n, c * kh * kw), min(c, n * kh * kw))
    t = partial_tucker2(w, ranks)
    assert t.core.shape == (*ranks, kh, kw)
    assert t.u_out.shape == (n, ranks[0]) and t.u_in.shape == (c, ranks[1])
    rec = tucker2_reconstruct(*t)
    assert float((rec - w).norm() / w.norm()) < 1e-10


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 8), c=st.integers(1, 8), kh=st.integers(1, 3), kw=st.integers(1, 3),
       fo=st.floats(0.01, 1.0), fi=st.floats(0.01, 1.0), seed=st.integers(0, 100))
def test_hosvd_error_obeys_theory(n, c, kh, kw, fo, fi, seed):
    w = _weight((n, c, kh, kw), seed)
    s0, s1 = mode_spectra(w)
    assert s0.numel() == min(n, c * kh * kw) and s1.numel() == min(c, n * kh * kw)
    r_o, r_i = max(1, round(fo * s0.numel())), max(1, round(fi * s1.numel()))
    t = partial_tucker2(w, (r_o, r_i))
    err2 = float((tucker2_reconstruct(*t) - w).pow(2).sum())
    e0, e1 = _discarded(s0, r_o), _discarded(s1, r_i)
    tol = 1e-10 * float(w.pow(2).sum())
    assert err2 <= e0 + e1 + tol
    assert err2 >= max(e0, e1) - tol
    # orthonormal factors
    eye_o, eye_i = torch.eye(r_o, dtype=w.dtype), torch.eye(r_i, dtype=w.dtype)
    assert torch.allclose(t.u_out.T @ t.u_out, eye_o, atol=1e-10)
    assert torch.allclose(t.u_in.T @ t.u_in, eye_i, atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 8), c=st.integers(2, 8), k=st.integers(1, 3), seed=st.integers(0, 100))
def test_hooi_never_worse_than_hosvd(n, c, k, seed):
    w = _weight((n, c, k, k), seed)
    ranks = (max(1, min(n, c * k * k) // 2), max(1, min(c, n * k * k) // 2))
    hosvd = float((tucker2_reconstruct(*partial_tucker2(w, ranks)) - w).norm())
    hooi = float((tucker2_reconstruct(*partial_tucker2(w, ranks, n_iter=5)) - w).norm())
    assert hooi <= hosvd + 1e-10 * float(w.norm())


def test_hooi_improves_a_case_where_hosvd_is_suboptimal():
    # A structured weight whose HOSVD is not the best Tucker-2 fit: HOOI must strictly improve
    # on at least one of a few random weights at low rank (it is a descent method).
    gains = []
    for seed in range(5):
        w = _weight((6, 6, 2, 2), seed)
        hosvd = float((tucker2_reconstruct(*partial_tucker2(w, (2, 2))) - w).norm())
        hooi = float((tucker2_reconstruct(*partial_tucker2(w, (2, 2), n_iter=10)) - w).norm())
        gains.append(hosvd - hooi)
    assert max(gains) > 1e-6


def test_core_is_projection():
    w = _weight((5, 4, 3, 2))
    t = partial_tucker2(w, (3, 2))
    assert torch.allclose(t.core, tucker2_core(w, t.u_out, t.u_in))
    # reconstruct = (U_out U_outᵀ) ×₁ (U_in U_inᵀ) ×₂ W
    p_o, p_i = t.u_out @ t.u_out.T, t.u_in @ t.u_in.T
    proj = torch.einsum("ocyx,po,qc->pqyx", w, p_o, p_i)
    assert torch.allclose(tucker2_reconstruct(*t), proj, atol=1e-12)


@pytest.mark.parametrize("ranks", [(0, 1), (1, 0), (7, 1), (1, 5)])
def test_rejects_bad_ranks(ranks):
    w = _weight((6, 4, 1, 1))  # limits: r_o ≤ min(6, 4) = 4, r_i ≤ 4
    with pytest.raises(ValueError):
        partial_tucker2(w, ranks)


def test_rejects_non_4d_and_negative_iterations():
    with pytest.raises(ValueError):
        partial_tucker2(_weight((3, 3)), (1, 1))
    with pytest.raises(ValueError):
        partial_tucker2(_weight((3, 3, 1, 1)), (1, 1), n_iter=-1)
