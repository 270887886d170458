"""`decompose`: example inputs (args/kwargs), format options, budgets, lossless CP and convs with
awkward options (groups, dilation, strides, padding modes)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rankwise.errors import ConfigError
from rankwise.layers import FORMATS
from rankwise.layers.base import dense_spec_of
from rankwise.surgery.decompose import decompose
from rankwise.surgery.rank import Fixed, ParamsBudget, Ratio
from tests.surgery.test_decompose import _params, _zoo, mlp

# ----- example inputs, format options, budgets, lossless CP, awkward convs ----------------------


class KwargModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.fc = nn.Linear(16, 16)

    def forward(self, ids: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.fc(self.emb(ids)) * scale


def test_example_inputs_args_kwargs_and_no_hidden_default():
    ids = torch.randint(0, 20, (1, 6))
    _, rep = decompose(KwargModel(), rank=4, example_inputs=((ids,), {"scale": 2.0}))
    assert rep.rows[0].macs_before == 6 * 16 * 16  # 6 tokens per sample
    _, rep = decompose(KwargModel(), rank=4)  # no forward pass at all: nothing to guess
    assert rep.totals["macs_before"] is None and rep.rows[0].format == "svd"
    with pytest.raises(ConfigError, match="example_inputs"):
        decompose(KwargModel(), rank="budget:macs=0.5")
    with pytest.raises(ConfigError, match="not both"):
        decompose(mlp(), rank=4, input_shape=(64,), example_inputs=(torch.zeros(1, 64),))
    # a model with 8 input channels works with its own example (no 3-channel default)
    net = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Flatten(), nn.LazyLinear(4))
    net(torch.zeros(1, 8, 6, 6))
    _, rep = decompose(net, "channel", Ratio(0.5), example_inputs=(torch.zeros(1, 8, 6, 6),))
    assert rep.rows[0].macs_before == 16 * 8 * 9 * 4 * 4


def test_format_options_reach_from_dense_and_progress_is_reported():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3))
    sweeps: list[int] = []
    seen: list[tuple[str, int, int]] = []
    opts = {"cp": {"n_iter_max": 3, "callback": lambda i, e: sweeps.append(i)}}
    _, rep = decompose(model, "cp", Fixed(4), format_options=opts,
                       progress=lambda n, i, k: seen.append((n, i, k)))
    assert [r.format for r in rep.rows] == ["cp", "cp"]
    assert max(sweeps) <= 3 and sweeps.count(1) == 2  # capped, one run per layer
    assert seen == [("0", 0, 2), ("2", 1, 2)]
    with pytest.raises(ConfigError, match="format_options"):
        decompose(model, "cp", Fixed(4), format_options={"nope": {}})
    with pytest.raises(ConfigError, match="format_options"):
        decompose(model, "cp", Fixed(4), format_options={"cp": {"bogus": 1}})


def test_tt_params_budget_is_met_on_zoo_mlp():
    model = _zoo("mlp")
    x = torch.zeros(1, *pytest.importorskip("rankwise.models").default_input_shape("mlp"))
    new, rep = decompose(model, "tt", ParamsBudget(0.5), example_inputs=(x,))
    assert rep.totals["params_ratio"] <= 0.5
    assert rep.totals["params_after"] == _params(new)
    tt = [r for r in rep.rows if r.format == "tt"]
    assert tt and all("MACs ×" in r.note for r in tt if r.macs_after > r.macs_before)
    with pytest.raises(ConfigError, match="unreachable"):
        decompose(model, "tt", ParamsBudget(0.001), example_inputs=(x,))


def test_cp_energy_one_is_lossless_or_dense_on_depthwise_and_low_rank_convs():
    torch.manual_seed(6)
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise: CP rank 1 would be wrong
    full = nn.Conv2d(8, 16, 3, padding=1)
    low = nn.Conv2d(16, 16, 3, padding=1)
    with torch.no_grad():  # CP rank ≤ 2 per construction: an exact CP exists and saves
        a, b, h, v = (torch.randn(d, 2, dtype=torch.float64) for d in (16, 16, 3, 3))
        low.weight.copy_(torch.einsum("or,ir,yr,xr->oiyx", a, b, h, v).float())
    model = nn.Sequential(dw, nn.ReLU(), full, nn.ReLU(), low).eval()
    x = torch.randn(2, 8, 6, 6)
    new, rep = decompose(model, "cp", "energy:1.0", example_inputs=(x[:1],))
    with torch.no_grad():
        y0, y = model(x), new(x)
    assert float((y - y0).norm() / y0.norm()) < 1e-5
    rows = {r.name: r for r in rep.rows}
    assert rows["0"].format is None and "kept dense" in rows["0"].note
    assert rows["4"].format == "cp"


AWKWARD = [  # cases tensorly-torch mishandles: grouped convs with "same", tuple strides
    dict(in_channels=8, out_channels=8, kernel_size=3, padding="same", groups=2),
    dict(in_channels=8, out_channels=12, kernel_size=(3, 5), padding="same", groups=4,
         dilation=(1, 2)),
    dict(in_channels=6, out_channels=8, kernel_size=3, stride=(2, 1), padding=(1, 0)),
    dict(in_channels=6, out_channels=8, kernel_size=(5, 3), stride=(1, 3), padding=2,
         padding_mode="reflect"),
]


@pytest.mark.parametrize("fmt", ["channel", "spatial", "tucker2", "cp"])
@pytest.mark.parametrize("kw", AWKWARD)
def test_awkward_convs_are_exact_at_full_rank(fmt, kw):
    torch.manual_seed(7)
    conv = nn.Conv2d(**kw).double()
    x = torch.randn(2, kw["in_channels"], 9, 10, dtype=torch.float64)
    spec = dense_spec_of(conv)
    if fmt == "cp":
        layer = FORMATS["cp"].from_dense(conv, FORMATS["cp"].exact_rank(conv.weight, spec),
                                         method="exact")
    else:
        r = FORMATS[fmt].max_rank(spec)
        layer = FORMATS[fmt].from_dense(conv, r[0] if len(r) == 1 else r)
    assert layer(x).shape == conv(x).shape
    assert torch.allclose(layer(x), conv(x), atol=1e-9)
    # through decompose: factorized exactly, or kept dense with the reason
    new, rep = decompose(nn.Sequential(conv), fmt, "energy:1.0")
    assert rep.rows[0].format is not None or rep.rows[0].note.startswith("kept dense")
    assert torch.allclose(new(x), conv(x), atol=1e-9)


def test_keyword_inputs_in_a_mapping_that_is_not_a_dict():
    """A tokenizer's `BatchEncoding` is a Mapping, not a dict (`UserDict` here): decompose takes
    it as keyword inputs, so MACs are counted on it."""
    from collections import UserDict

    import rankwise

    class Keyed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(16, 16)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.fc(features)

    model = Keyed()
    small, report = rankwise.decompose(model, rank="budget:macs=0.5",
                                       example_inputs=UserDict(features=torch.zeros(1, 16)))
    assert report.model_macs_before == 256 and report.model_macs_after <= 128
