"""CP-ALS of 4-way conv weights."""

import pytest
import torch

from rankwise.linalg.cp import cp_als, cp_reconstruct


def _cp_weight(shape, rank, seed):
    g = torch.Generator().manual_seed(seed)
    return cp_reconstruct([torch.randn(s, rank, generator=g, dtype=torch.float64) for s in shape])


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    ("shape", "rank", "seed"),
    [((8, 6, 3, 2), 3, 0), ((5, 4, 3, 3), 4, 1), ((12, 10, 3, 3), 6, 2), ((4, 3, 1, 1), 2, 3),
     ((6, 5, 1, 3), 2, 4)],
)
def test_exact_cp_rank_is_recovered(shape, rank, seed):
    w = _cp_weight(shape, rank, seed)
    f = cp_als(w, rank)
    assert [t.shape for t in f] == [(s, rank) for s in shape]
    assert _rel(cp_reconstruct(f), w) < 1e-6


def test_deterministic_and_seeded():
    w = _cp_weight((5, 4, 2, 2), 6, 0) + 0.1 * _cp_weight((5, 4, 2, 2), 1, 9)
    a, b = cp_als(w, 6, seed=3), cp_als(w, 6, seed=3)  # rank 6 > kh, kw: random completion
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_weights_are_folded_evenly():
    w = _cp_weight((6, 5, 3, 3), 3, 5)
    f = cp_als(w, 3)
    norms = torch.stack([t.norm(dim=0) for t in f])  # (4, R): all four columns of a term equal
    assert torch.allclose(norms, norms[:1].expand_as(norms), rtol=1e-8)


def test_more_terms_fit_better_than_one():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, 3, 3, generator=g, dtype=torch.float64)
    e1 = _rel(cp_reconstruct(cp_als(w, 1)), w)
    e8 = _rel(cp_reconstruct(cp_als(w, 8)), w)
    assert e8 < e1 < 1.0


def test_zero_tensor_and_errors():
    f = cp_als(torch.zeros(3, 2, 2, 2, dtype=torch.float64), 2)
    assert all(torch.count_nonzero(t) == 0 for t in f)
    with pytest.raises(ValueError):
        cp_als(torch.zeros(3, 3, dtype=torch.float64), 1)
    with pytest.raises(ValueError):
        cp_als(torch.ones(2, 2, 2, 2, dtype=torch.float64), 0)
