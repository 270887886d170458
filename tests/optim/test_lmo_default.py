"""The spectral LMOs' default path: exact top-K where it is not slower (see the module doc)."""

from __future__ import annotations

import pytest
import torch

from rankwise.errors import ConfigError
from rankwise.optim import NuclearBall, SpectralKSparsePolytope, SpectralKSupportBall
from rankwise.optim.constraints_spectral import AUTO_EXACT_MAX_SIDE


def test_default_k_pair_lmo_is_the_exact_vertex() -> None:
    g = torch.randn(32, 16, 3, 3, generator=torch.Generator().manual_seed(0))
    u, s, vh = torch.linalg.svd(-g.flatten(1).double(), full_matrices=False)
    k, r = 9, 2.0
    exact = (r / torch.linalg.vector_norm(s[:k])) * (u[:, :k] * s[:k]) @ vh[:k]
    c = SpectralKSupportBall(32, k, radius=r)
    assert c.method == "auto" and c.resolved_method((32, 144)) == "exact"
    v = c.lmo(g).double().flatten(1)
    assert torch.allclose(v, exact, atol=1e-4)
    power = SpectralKSupportBall(32, k, radius=r, method="power", warm_start=False).lmo(g)
    # the 10-step power vertex is measurably worse in objective than the default
    assert float((g * power).sum()) > float((g.double().flatten(1) * v).sum()) + 1e-6
    sparse = SpectralKSparsePolytope(32, k, radius=r).lmo(g).double().flatten(1)
    assert torch.allclose(sparse, r * u[:, :k] @ vh[:k], atol=1e-4)


def test_nuclear_auto_switches_to_power_only_above_the_threshold() -> None:
    c = NuclearBall(radius=1.0)
    side = AUTO_EXACT_MAX_SIDE
    assert c.resolved_method((side, 9 * side)) == "exact"
    assert c.resolved_method((side + 1, 9 * side)) == "power"
    assert SpectralKSupportBall(512, 1, radius=1.0).resolved_method((512, 4608)) == "power"
    assert SpectralKSupportBall(512, 2, radius=1.0).resolved_method((512, 4608)) == "exact"
    assert NuclearBall(radius=1.0, method="exact").resolved_method((512, 4608)) == "exact"
    with pytest.raises(ConfigError, match="method"):
        NuclearBall(radius=1.0, method="lanczos")
