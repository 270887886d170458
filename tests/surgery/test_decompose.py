"""decompose() / to_dense(): layer selection, formats, rank policies, budgets and the report."""

from __future__ import annotations

import io as _io
import json
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from torch import nn

from rankwise.analysis.profile import count
from rankwise.errors import ConfigError, RankError, UnsupportedLayerError
from rankwise.layers import FactorizedLayer
from rankwise.surgery.decompose import decompose, matches, reconstruct, to_dense
from rankwise.surgery.rank import Energy, Fixed, MacsBudget, ParamsBudget, Ratio

# ----- small local models (the zoo versions are exercised when rankwise.models has them) ---------


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                       nn.BatchNorm2d(c_out))
                         if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """conv1 → layer1 (8→8) → layer2 (8→16, stride 2, 1×1 shortcut) → fc."""

    def __init__(self, width: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(Block(width, width, 1))
        self.layer2 = nn.Sequential(Block(width, 2 * width, 2))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(x.mean((2, 3)))


def vgg_like() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(),
                         nn.Linear(32, 10))


class TransformerMLP(nn.Module):
    """Pre-norm blocks: attention (kept dense) + MLP with linears inside each block."""

    def __init__(self, dim: int = 16, hidden: int = 48, depth: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            blk = nn.Module()
            blk.norm = nn.LayerNorm(dim)
            blk.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
            blk.fc1 = nn.Linear(dim, hidden)
            blk.fc2 = nn.Linear(hidden, dim)
            self.blocks.append(blk)
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            h = blk.norm(x)
            x = x + blk.attn(h, h, h, need_weights=False)[0]
            x = x + blk.fc2(torch.relu(blk.fc1(blk.norm(x))))
        return self.head(x.mean(1))


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _zoo(name: str, **kw):
    models = pytest.importorskip("rankwise.models")
    if not hasattr(models, "create_model"):
        pytest.skip("rankwise.models.create_model not written yet")
    return models.create_model(name, **kw)


# ----- tests -------------------------------------------------------------------------------------


def test_resnet_tucker2_replaces_convs_and_counts_match():
    torch.manual_seed(0)
    model = TinyResNet(width=16).eval()
    new, report = decompose(model, "tucker2", Ratio(0.5), input_shape=(3, 16, 16))
    rows = {r.name: r for r in report.rows}
    # every conv/linear is visited; the 1x1 shortcut is moved to "channel", with a note
    assert set(rows) == {"conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1",
                         "layer2.0.conv2", "layer2.0.shortcut.0", "fc"}
    assert "channel" in rows["layer2.0.shortcut.0"].note
    for name, row in rows.items():
        mod = new.get_submodule(name)
        assert isinstance(mod, FactorizedLayer) == (row.format is not None)
        if row.format is not None:
            assert row.params_after == _params(mod) < row.params_before
    assert rows["layer1.0.conv2"].format == "tucker2" and rows["layer1.0.conv2"].rank == (8, 8)
    # totals agree with an independent count of both models
    assert report.totals["params_before"] == _params(model)
    assert report.totals["params_after"] == _params(new)
    assert report.totals["macs_before"] == count(model, (3, 16, 16))[2]
    assert report.totals["macs_after"] == count(new, (3, 16, 16))[2]
    assert new(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_original_untouched_unless_inplace_and_bn_stats_kept():
    model = TinyResNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new, _ = decompose(model, "channel", Ratio(0.5), input_shape=(3, 8, 8))
    assert new is not model and isinstance(model.layer1[0].conv1, nn.Conv2d)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # incl. BatchNorm running stats
    assert new.training and model.training  # the tracing pass restored train mode
    same, _ = decompose(model, "channel", Ratio(0.5), input_shape=(3, 8, 8), inplace=True)
    assert same is model and isinstance(model.layer1[0].conv1, FactorizedLayer)


@pytest.mark.parametrize("fmt", ["channel", "spatial", "tucker2", "cp"])
def test_vgg_formats_then_to_dense(fmt):
    torch.manual_seed(1)
    model = vgg_like().eval()
    x = torch.randn(2, 3, 8, 8)
    ratio = Fixed(4) if fmt == "cp" else Ratio(0.5)  # CP-ALS time grows with the rank
    new, report = decompose(model, fmt, ratio, input_shape=(3, 8, 8))
    assert report.totals["factorized"] >= 1
    dense = to_dense(new)
    assert not any(isinstance(m, FactorizedLayer) for m in dense.modules())
    assert torch.allclose(dense(x), new(x), atol=1e-4)
    assert reconstruct is to_dense


def test_mlp_energy_one_keeps_function_when_it_saves():
    torch.manual_seed(2)
    # rank-4 weights: an exact factorization that saves params
    model = nn.Sequential(nn.Linear(64, 64, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(64, 4) @ torch.randn(4, 64))
    new, report = decompose(model, rank=Energy(0.999999), input_shape=(64,))
    assert report.rows[0].format == "svd" and report.rows[0].rank == 4
    x = torch.randn(3, 64)
    assert torch.allclose(new(x), model(x), atol=1e-3)


def test_mlp_linear_format_none_and_svd_as_format():
    model = mlp()
    _, report = decompose(model, rank=Ratio(0.25), input_shape=(1, 8, 8), linear_format=None)
    assert report.rows == []
    new, report = decompose(model, format="svd", rank=Ratio(0.25), input_shape=(1, 8, 8))
    assert [r.format for r in report.rows] == ["svd", "svd", "svd"]
    # Ratio(0.25) of min(48, 64) = 12: 12·(64 + 48) weights + 48 bias
    assert report.rows[0].rank == 12 and report.rows[0].params_after == 12 * 112 + 48
    assert new(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_transformer_mlp_linears_tokens_and_attention_projections():
    torch.manual_seed(3)
    t, dim, hidden = 5, 16, 48
    model = TransformerMLP(dim, hidden).eval()
    x = torch.randn(2, t, dim)
    new, report = decompose(model, rank=Ratio(0.25), example_inputs=(torch.zeros(1, t, dim),))
    names = [r.name for r in report.rows]
    projs = [f"blocks.0.attn.{p}_proj" for p in "qkvo"]
    projs[-1] = "blocks.0.attn.out_proj"
    assert names[:6] == [*projs, "blocks.0.fc1", "blocks.0.fc2"] and names[-1] == "head"
    fc1 = report.rows[4]
    assert fc1.macs_before == t * dim * hidden  # 5 tokens × 16 × 48
    assert fc1.format == "svd" and fc1.rank == 4  # ratio 0.25 of min(16, 48)
    assert fc1.macs_after == t * 4 * (dim + hidden)
    q = report.rows[0]
    assert q.format == "svd" and q.macs_before == t * dim * dim  # tokens, not batch × tokens
    assert isinstance(new.blocks[0].attn.q_proj, FactorizedLayer)
    assert report.totals["params_after"] == _params(new)
    assert new(x).shape == (2, 4)
    # include on the attention module selects its four projections
    _, rep = decompose(model, rank=Ratio(0.25), include="blocks.0.attn")
    assert [r.name for r in rep.rows] == projs
    # nothing factorized inside an attention module: the original module comes back
    same, rep = decompose(model, rank=Ratio(0.25), include="blocks.0.fc1")
    assert isinstance(same.blocks[0].attn, nn.MultiheadAttention)
    dense = to_dense(new)
    assert isinstance(dense.blocks[0].attn, nn.MultiheadAttention)
    assert torch.allclose(dense(x), new(x), atol=1e-5)


def test_include_exclude_glob_regex_callable():
    model = TinyResNet()
    kw = dict(format="channel", rank=Ratio(0.5), input_shape=(3, 8, 8))
    _, rep = decompose(model, include="layer1.*", **kw)
    assert [r.name for r in rep.rows] == ["layer1.0.conv1", "layer1.0.conv2"]
    _, rep = decompose(model, include=r"layer\d\.0\.conv2", **kw)
    assert [r.name for r in rep.rows] == ["layer1.0.conv2", "layer2.0.conv2"]
    _, rep = decompose(model, exclude=["conv1", re.compile(r"shortcut|fc")], **kw)
    assert [r.name for r in rep.rows] == ["layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1",
                                          "layer2.0.conv2"]
    _, rep = decompose(model, include=lambda n, m: isinstance(m, nn.Linear), **kw)
    assert [r.name for r in rep.rows] == ["fc"]
    assert matches("a.b", nn.Identity(), "a.*") and not matches("a.b", nn.Identity(), "b")


def test_skip_first_conv():
    _, rep = decompose(TinyResNet(), "channel", Ratio(0.5), input_shape=(3, 8, 8),
                       skip_first_conv=True)
    first = rep.rows[0]
    assert first.name == "conv1" and first.format is None and "first conv" in first.note


def test_rank_above_max_names_layer_and_max():
    with pytest.raises(RankError, match=r"layer1\.0\.conv1.*\(8, 8\)"):
        decompose(TinyResNet(), "tucker2", Fixed(9), input_shape=(3, 8, 8),
                  include="layer1.0.conv1")
    with pytest.raises(RankError, match=r"layer1\.0\.conv1.*\(8,\)"):
        decompose(TinyResNet(), "channel", 100, input_shape=(3, 8, 8), include="layer1.*")


def test_unsupported_layer_in_include_is_named():
    model = nn.Sequential(nn.Conv1d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6, 2))
    with pytest.raises(UnsupportedLayerError, match=r"\b0\b.*Conv1d"):
        decompose(model, include=["0", "2"], input_shape=(3, 8))
    _, rep = decompose(model, rank=Ratio(0.5), input_shape=(3, 8))  # no include: Conv1d ignored
    assert [r.name for r in rep.rows] == ["2"]


def test_kept_dense_note_gives_factor_and_rank():
    # 8x8 linear at full rank 8: svd costs 8·8 + 8·8 = 128 weights > 64 → kept dense
    model = nn.Sequential(nn.Linear(8, 8, bias=False))
    new, rep = decompose(model, rank=Fixed(8), input_shape=(8,))
    row = rep.rows[0]
    assert row.format is None and isinstance(new[0], nn.Linear)
    assert row.note == "kept dense: svd at rank 8 costs 2.00× the dense params"
    # min_saving: rank 3 saves 1 - 48/64 = 25% < 50% → dense; rank 2 saves 50%
    _, rep = decompose(model, rank=Fixed(3), input_shape=(8,), min_saving=0.5)
    assert rep.rows[0].format is None and "min_saving" in rep.rows[0].note
    _, rep = decompose(model, rank=Fixed(2), input_shape=(8,), min_saving=0.5)
    assert rep.rows[0].format == "svd"


@pytest.mark.parametrize("budget", [ParamsBudget(0.4), MacsBudget(0.4)])
def test_global_budget_meets_target(budget):
    torch.manual_seed(4)
    model = vgg_like()
    new, rep = decompose(model, "tucker2", budget, input_shape=(3, 8, 8))
    key = "params_ratio" if isinstance(budget, ParamsBudget) else "macs_ratio"
    assert rep.totals[key] <= 0.4 + 1e-9
    assert rep.totals[key] > 0.2  # the allocator spends the budget, not just rank 1
    assert rep.totals["params_after"] == _params(new)


def test_budget_and_config_errors():
    with pytest.raises(ConfigError):
        decompose(mlp(), rank=ParamsBudget(0.001), input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="unknown format"):
        decompose(mlp(), format="nope")
    with pytest.raises(ConfigError, match="input_shape"):
        decompose(TinyResNet(), input_shape=(5, 8, 8))


def test_string_rank_and_report_outputs():
    model = TinyResNet()
    _, rep = decompose(model, "tucker2", "ratio:0.5", input_shape=(3, 8, 8))
    d = rep.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["policy"] == "ratio:0.5" and len(d["rows"]) == len(rep.rows)
    md = rep.to_markdown()
    assert md.count("\n|") == len(rep.rows) + 1 and "layer1.0.conv2" in md
    buf = _io.StringIO()
    Console(file=buf, width=200).print(rep)
    assert "layer2.0.shortcut.0" in buf.getvalue() and "factorized" in buf.getvalue()


def test_no_input_shape_gives_unknown_macs():
    _, rep = decompose(TinyResNet(), "channel", Ratio(0.5), input_shape=None)
    assert rep.totals["macs_before"] is None and all(r.macs_before is None for r in rep.rows)
    assert rep.totals["factorized"] > 0


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 24), c=st.integers(2, 24), frac=st.floats(0.05, 1.0))
def test_linear_ratio_property(n, c, frac):
    model = nn.Sequential(nn.Linear(c, n))
    new, rep = decompose(model, rank=Ratio(frac), input_shape=(c,))
    row = rep.rows[0]
    assert row.params_after == _params(new)
    assert (row.params_after < row.params_before) == (row.format is not None)
    x = torch.randn(2, c)
    assert new(x).shape == (2, n)


def test_zoo_resnet20_skip_first_conv_and_rank_error():
    model = _zoo("resnet20", num_classes=10)
    new, rep = decompose(model, "tucker2", Energy(0.9), input_shape=(3, 32, 32),
                         skip_first_conv=True)
    assert rep.rows[0].name == "conv1" and rep.rows[0].format is None
    assert "layer1.0.conv1" in {r.name for r in rep.rows}
    assert rep.totals["params_after"] == _params(new)
    assert new(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(RankError, match=r"layer1\.0\.conv1"):
        decompose(model, "tucker2", Fixed(17), include="layer1.0.conv1")


def test_skip_first_conv_is_the_models_first_even_when_excluded():
    # conv1 is excluded, so skip_first_conv must not move on to layer1.0.conv1
    _, rep = decompose(TinyResNet(), "channel", Ratio(0.5), input_shape=(3, 8, 8),
                       skip_first_conv=True, exclude="conv1")
    assert rep.rows[0].name == "layer1.0.conv1" and rep.rows[0].format == "channel"


@pytest.mark.parametrize("name,kw,fmt", [("vgg16", {"width": 8}, "channel"),
                                         ("mlp", {}, "tucker2"),
                                         ("mlpmixer", {}, "tucker2"),
                                         ("resnet20", {}, "spatial")])
def test_zoo_models_decompose_and_count(name, kw, fmt):
    models = pytest.importorskip("rankwise.models")
    if not hasattr(models, "create_model"):
        pytest.skip("rankwise.models.create_model not written yet")
    torch.manual_seed(0)
    model = models.create_model(name, **kw).eval()
    shape = tuple(models.default_input_shape(name))
    new, rep = decompose(model, fmt, Ratio(0.3), input_shape=shape)
    assert rep.totals["factorized"] >= 1
    assert rep.totals["params_after"] == _params(new) < _params(model)
    assert rep.totals["macs_after"] == count(new, shape)[2]
    assert new(torch.zeros(2, *shape)).shape == (2, 10)
    if name == "mlpmixer":  # linears inside blocks, token-mixing ones see (dim) rows per sample
        fc1 = {r.name: r for r in rep.rows}["blocks.0.token_mlp.fc1"]
        assert fc1.format == "svd" and fc1.macs_before == 64 * 64 * 32  # dim·tokens·hidden


def test_already_factorized_layers_are_left_alone():
    once, _ = decompose(TinyResNet(), "channel", Ratio(0.5), input_shape=(3, 8, 8),
                        include="layer1.*")
    twice, rep = decompose(once, "tucker2", Ratio(0.5), input_shape=(3, 8, 8))
    names = [r.name for r in rep.rows]
    assert "layer1.0.conv1" not in names and not any(".first" in n for n in names)
    assert twice.layer1[0].conv1.format == "channel" and twice.layer2[0].conv1.format == "tucker2"
