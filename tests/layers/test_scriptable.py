"""Every registered factorized format compiles with `torch.jit.script` and matches eager."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rankwise.layers import FORMATS, FactorizedLayer
from rankwise.layers.base import dense_spec_of

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _layer(fmt: str) -> tuple[FactorizedLayer, torch.Tensor]:
    cls = FORMATS[fmt]
    dense = (nn.Conv2d(4, 6, 3, padding=1, groups=2) if cls.dense_type is nn.Conv2d
             else nn.Linear(12, 8))
    spec = dense_spec_of(dense)
    rank = tuple(max(1, r // 2) for r in cls.max_rank(spec))
    layer = cls.from_spec(spec, rank if len(rank) > 1 else rank[0]).eval()
    x = torch.randn(2, 4, 5, 5) if cls.dense_type is nn.Conv2d else torch.randn(2, 3, 12)
    return layer, x


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_format_scripts_and_matches_eager(fmt):
    torch.manual_seed(0)
    layer, x = _layer(fmt)
    scripted = torch.jit.script(layer)
    torch.testing.assert_close(scripted(x), layer(x), rtol=1e-5, atol=1e-6)
    assert layer.rank is not None and layer.spec()["format"] == fmt  # Python side untouched
