import pytest
import torch

from rankwise.linalg.svd import balanced_factors, low_rank_approx, svdvals, thin_svd, truncated_svd


@pytest.mark.parametrize("shape", [(5, 17), (17, 5), (3, 4, 9), (6, 6)])
def test_thin_svd_matches_lapack_on_both_sides(shape):
    m = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u, s, vh = thin_svd(m)
    k = min(shape[-2:])
    assert u.shape == (*shape[:-1], k) and vh.shape == (*shape[:-2], k, shape[-1])
    torch.testing.assert_close((u * s.unsqueeze(-2)) @ vh, m, rtol=0, atol=1e-12)
    torch.testing.assert_close(s, torch.linalg.svdvals(m), rtol=0, atol=1e-12)
    torch.testing.assert_close(svdvals(m), torch.linalg.svdvals(m), rtol=0, atol=1e-12)
    eye = torch.eye(k, dtype=m.dtype)
    torch.testing.assert_close(u.mT @ u, eye.expand_as(u.mT @ u), rtol=0, atol=1e-12)


def test_truncation_is_eckart_young():
    m = torch.randn(8, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    s = torch.linalg.svdvals(m)
    for r in (1, 3, 8):
        err = torch.linalg.matrix_norm(m - low_rank_approx(m, r))
        assert float(err) == pytest.approx(float(s[r:].pow(2).sum().sqrt()), rel=1e-10)
        a, b = balanced_factors(m, r)
        torch.testing.assert_close(a @ b, low_rank_approx(m, r), rtol=0, atol=1e-12)
        assert truncated_svd(m, r)[1].shape == (r,)
