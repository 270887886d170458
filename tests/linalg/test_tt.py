"""TT-SVD of d-way tensors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankwise.linalg.tt import tt_max_ranks, tt_reconstruct, tt_svd, tt_unfolding_spectra


def _tensor(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def test_max_ranks_by_hand():
    assert tt_max_ranks((2, 3, 4)) == (2, 4)
    assert tt_max_ranks((5, 5)) == (5,)
    assert tt_max_ranks((2, 2, 2, 2)) == (2, 4, 2)


shapes = st.lists(st.integers(1, 5), min_size=2, max_size=4)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 50))
def test_full_rank_is_exact(shape, seed):
    t = _tensor(shape, seed)
    ranks = tt_max_ranks(shape)
    cores = tt_svd(t, ranks)
    full = (1, *ranks, 1)
    assert [tuple(g.shape) for g in cores] == [(full[k], s, full[k + 1])
                                               for k, s in enumerate(shape)]
    assert float((tt_reconstruct(cores) - t).norm() / t.norm()) < 1e-10


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 50), data=st.data())
def test_truncation_error_bound(shape, seed, data):
    t = _tensor(shape, seed)
    limits = tt_max_ranks(shape)
    ranks = [data.draw(st.integers(1, m)) for m in limits]
    rec = tt_reconstruct(tt_svd(t, ranks))
    spectra = tt_unfolding_spectra(t)
    assert [s.numel() for s in spectra] == list(limits)
    bound = math.sqrt(sum(float(s[r:].pow(2).sum()) for s, r in zip(spectra, ranks, strict=True)))
    assert float((rec - t).norm()) <= bound + 1e-10 * float(t.norm())
    # and never better than the best rank-r_k fit of any unfolding
    for s, r in zip(spectra, ranks, strict=True):
        assert float((rec - t).norm()) >= math.sqrt(float(s[r:].pow(2).sum())) - 1e-10


def test_requested_shapes_even_when_unreachable():
    # r_1 = 1 caps the second unfolding's sequential rank at r_1·I_2 = 4 < 5: zero padding.
    t = _tensor((4, 4, 4))
    cores = tt_svd(t, (1, 5))
    assert [tuple(g.shape) for g in cores] == [(1, 4, 1), (1, 4, 5), (5, 4, 1)]
    rec = tt_reconstruct(cores)
    assert torch.isfinite(rec).all()
    assert float((rec - t).norm()) < float(t.norm())


def test_errors():
    with pytest.raises(ValueError):
        tt_svd(_tensor((4,)), ())
    with pytest.raises(ValueError):
        tt_svd(_tensor((2, 3, 4)), (2,))
    with pytest.raises(ValueError):
        tt_svd(_tensor((2, 3, 4)), (0, 2))
