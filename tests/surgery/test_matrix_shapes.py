"""`allocate.matrix_shapes`, the matrix each spectrum comes from (what VBMF's threshold reads),
agrees with every format's spectra: one shape per spectrum, each spectrum min(p, q) long."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rankwise.layers import FORMATS
from rankwise.layers.base import dense_spec_of
from rankwise.surgery.allocate import matrix_shapes

LAYERS = [nn.Linear(24, 40), nn.Conv2d(8, 12, 3), nn.Conv2d(8, 12, (3, 5), padding=1),
          nn.Conv2d(8, 12, 3, groups=2), nn.Conv2d(8, 12, 1), nn.Conv2d(8, 16, 3, groups=4)]
CASES = [(f, m) for f in sorted(FORMATS) for m in LAYERS if type(m) is FORMATS[f].dense_type]


@pytest.mark.parametrize(("fmt", "layer"), CASES, ids=lambda v: v if isinstance(v, str) else
                         repr(v))
def test_every_spectrum_matches_its_matrix_shape(fmt, layer):
    torch.manual_seed(0)
    spec = dense_spec_of(layer)
    spectra = FORMATS[fmt].spectra(layer.weight.detach(), spec)
    shapes = matrix_shapes(fmt, spec)
    assert len(shapes) == len(spectra)
    assert [len(s) for s in spectra] == [min(p, q) for p, q in shapes]
