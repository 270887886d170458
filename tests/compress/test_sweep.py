"""The no-retraining compression sweep: SVD truncation / filter pruning at several ratios."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rankwise.compress.sweep import filter_sweep, lowrank_sweep, parse_ratios, truncate_model
from rankwise.compress.sweep_report import plot_sweep, sweep_markdown, write_sweep
from rankwise.data.synthetic import make_synthetic
from rankwise.errors import ConfigError
from rankwise.train import evaluate

torch.set_num_threads(1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Tiny(nn.Module):
    """a: 3→8, 3×3, no bias (8×8 → 8×8); b: 8→16, 3×3, stride 2, bias (→ 4×4); fc 16→5."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        x = torch.relu(self.b(x))
        return self.fc(x.mean(dim=(2, 3)))


def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny().eval()


@pytest.fixture(scope="module")
def data():
    return make_synthetic(False, 96, (3, 8, 8), num_classes=5, seed=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny after 3 short epochs on the same synthetic patterns: well above chance."""
    from rankwise.train import TrainConfig, Trainer

    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.1, quiet=True, augment=False,
                      schedule="none")
    train = make_synthetic(True, 192, (3, 8, 8), num_classes=5, seed=3)
    trainer = Trainer(tiny(), cfg, train, None, tmp_path_factory.mktemp("trained"))
    trainer.fit()
    return trainer.model.eval()


# Hand counts for Tiny on 3×8×8 (weights + biases; MACs per sample, bias excluded).
DENSE_PARAMS = 8 * 27 + (16 * 72 + 16) + (16 * 5 + 5)  # 1469
DENSE_MACS = 64 * 8 * 27 + 16 * 16 * 72 + 16 * 5  # 32336


def test_dense_hand_counts_and_ratio_zero_reproduces_accuracy(data, trained):
    model = trained
    ref = evaluate(model, data, 32, "cpu")
    assert ref["acc"] > 0.4  # 5 classes: chance is 0.2
    (row,) = lowrank_sweep(model, data, [0.0], batch_size=32)
    assert row["acc"] == ref["acc"] and row["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    assert row["acc_dense"] == ref["acc"] and row["stability"] == 1.0
    assert row["relative_norm_drop"] == 0.0 and row["weight_error"] == 0.0
    assert (row["params"], row["macs"]) == (DENSE_PARAMS, DENSE_MACS)
    assert (row["params_dense"], row["macs_dense"]) == (DENSE_PARAMS, DENSE_MACS)
    assert row["compression"] == 1.0 and row["speedup"] == 1.0


def test_costs_at_half_rank_match_hand_counts(data):
    (row,) = lowrank_sweep(tiny(), data, [0.5], batch_size=32)
    # a: max rank 8 -> 4: 4·27 + 8·4 = 140 params, ×64 pixels; b: 16 -> 8: 8·72 + 16·8 + 16
    a_p, b_p = 4 * 27 + 8 * 4, 8 * 72 + 16 * 8 + 16
    assert row["params"] == a_p + b_p + 85
    assert row["macs"] == 64 * a_p + 16 * (8 * 72 + 16 * 8) + 80
    assert row["compression"] == pytest.approx(DENSE_PARAMS / row["params"])
    layers = {r["name"]: r for r in row["layers"]}
    assert set(layers) == {"a", "b"}  # linear only with include_linear
    assert (layers["a"]["rank"], layers["b"]["rank"]) == (4, 8)
    assert row["factorized_layers"] == 2

    (lin,) = lowrank_sweep(tiny(), data, [0.5], batch_size=32, include_linear=True)
    # fc: max rank 5 -> int(2.5) = 2: 2·16 + 5·2 + 5 = 47 params, 42 MACs
    assert lin["params"] == a_p + b_p + 47
    assert lin["macs"] == row["macs"] - 80 + 42


def test_layers_that_would_not_save_count_dense(data):
    (row,) = lowrank_sweep(tiny(), data, [0.1], batch_size=32)
    # a: rank 7 -> 7·27 + 8·7 = 245 > 216; b: rank 14 -> 14·72 + 16·14 + 16 = 1248 > 1168
    assert [r["rank"] for r in row["layers"]] == [7, 14]
    assert row["factorized_layers"] == 0
    assert (row["params"], row["macs"]) == (DENSE_PARAMS, DENSE_MACS)
    assert row["weight_error"] > 0  # the weights are truncated all the same


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(0.0, 0.99), min_size=2, max_size=6))
def test_params_and_macs_monotone_in_ratio(ratios):
    data = make_synthetic(False, 8, (3, 8, 8), num_classes=5, seed=3)
    rows = lowrank_sweep(tiny(), data, sorted(ratios), include_linear=True, batch_size=8)
    for lo, hi in zip(rows, rows[1:], strict=False):
        assert hi["params"] <= lo["params"] and hi["macs"] <= lo["macs"]
        assert hi["weight_error"] >= lo["weight_error"] - 1e-9
    assert all(r["params"] <= DENSE_PARAMS for r in rows)


def _group_matrices(w: torch.Tensor, groups: int, scheme: str) -> list[torch.Tensor]:
    """Per-group matricizations written out independently of rankwise.linalg (float64)."""
    out = []
    for blk in w.detach().double().chunk(groups, 0):
        n, c, kh, kw = blk.shape
        if scheme == "channel":
            out.append(blk.reshape(n, c * kh * kw))
        else:
            out.append(blk.permute(0, 3, 1, 2).reshape(n * kw, c * kh))
    return out


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(1, 6), k=st.sampled_from([1, 3]),
       groups=st.sampled_from([1, 2]), ratio=st.floats(0.0, 0.99),
       scheme=st.sampled_from(["channel", "spatial"]))
def test_truncated_weights_have_target_rank_and_optimal_error(n, c, k, groups, ratio, scheme):
    torch.manual_seed(n * 100 + c)
    conv = nn.Conv2d(c * groups, n * groups, k, groups=groups, bias=False)
    model = nn.Sequential(conv)
    cut, rows = truncate_model(model, ratio, scheme)
    mats, new = (_group_matrices(m.weight, groups, scheme) for m in (conv, cut[0]))
    max_rank = min(mats[0].shape)
    target = max(1, int((1 - ratio) * max_rank))
    assert rows[0]["max_rank"] == max_rank and rows[0]["rank"] == target
    err = 0.0
    for m, t in zip(mats, new, strict=True):
        assert torch.linalg.matrix_rank(t, atol=1e-5).item() <= target
        s = torch.linalg.svdvals(m)
        err += float(s[target:].square().sum())  # Eckart-Young: the tail energy
        assert float((t - m).square().sum()) == pytest.approx(float(s[target:].square().sum()),
                                                              rel=1e-3, abs=1e-8)
    assert rows[0]["sq_error"] == pytest.approx(err, rel=1e-3, abs=1e-8)
    assert cut[0].weight.shape == conv.weight.shape and cut[0] is not conv
    assert torch.equal(model[0].weight, conv.weight)  # the input model is untouched


def test_norm_drop_and_weight_error_by_hand(data):
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    (row,) = lowrank_sweep(model, data, [0.5], batch_size=32)
    s = torch.linalg.svdvals(conv.weight.detach().double().reshape(6, -1))
    tail = float(s[3:].square().sum()) / float(s.square().sum())
    # the only parameter is the conv weight and truncation is an orthogonal projection
    assert row["weight_error"] == pytest.approx(math.sqrt(tail), rel=1e-4)
    assert row["relative_norm_drop"] == pytest.approx(math.sqrt(tail), rel=1e-3)


def test_evaluated_model_is_the_truncated_one(data):
    seen = {}

    def capture(model: nn.Module) -> dict[str, float]:
        ranks = [int(torch.linalg.matrix_rank(m.weight.detach().flatten(1), atol=1e-5))
                 for m in (model.a, model.b)]
        seen.setdefault(tuple(ranks), 0)
        return {"acc": 0.5, "loss": 1.0}

    rows = lowrank_sweep(tiny(), data, [0.0, 0.75], evaluate_fn=capture)
    assert set(seen) == {(8, 16), (2, 4)}  # base model, ratio 0 (same ranks), ratio 0.75
    assert [r["stability"] for r in rows] == [1.0, 1.0]


def test_filter_sweep_zeroes_the_smallest_l1_fraction(data):
    model = tiny()
    captured = []

    def capture(m: nn.Module) -> dict[str, float]:
        captured.append({k: v.weight.detach().clone() for k, v in (("a", m.a), ("b", m.b))})
        return evaluate(m, data, 32, "cpu")

    rows = filter_sweep(model, data, [0.0, 0.25], evaluate_fn=capture)
    assert len(captured) == 3  # the base model, then one per ratio
    pruned = captured[2]
    for name, n in (("a", 8), ("b", 16)):
        w = getattr(model, name).weight.detach()
        zero = (pruned[name].flatten(1).abs().sum(1) == 0).nonzero().flatten()
        smallest = w.flatten(1).abs().sum(1).argsort()[: round(0.25 * n)]
        assert sorted(zero.tolist()) == sorted(smallest.tolist())
        kept = pruned[name].flatten(1).abs().sum(1) > 0
        assert torch.equal(pruned[name][kept], w[kept])
    assert rows[0]["acc"] == rows[0]["acc_dense"] and rows[0]["pruned_filters"] == 0
    assert rows[1]["pruned_filters"] == 2 + 4
    # a keeps 6 filters of 27 weights; b keeps 12 filters of 72 weights + 12 biases
    assert rows[1]["params"] == DENSE_PARAMS - (216 + 1168) + (6 * 27 + 12 * 72 + 12)
    assert rows[1]["macs"] == 64 * 6 * 27 + 16 * 12 * 72 + 80
    assert rows[0]["params"] == DENSE_PARAMS and rows[0]["macs"] == DENSE_MACS


def test_plot_markdown_and_files(tmp_path, data):
    rows = {"dense": lowrank_sweep(tiny(0), data, [0.0, 0.5], batch_size=32),
            "other": lowrank_sweep(tiny(1), data, [0.0, 0.5, 0.9], batch_size=32)}
    png = plot_sweep(rows, tmp_path / "sub" / "a.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    md = sweep_markdown(rows)
    assert "| ratio | dense acc % | other acc % |" in md and "## other" in md
    assert "| 0.9 | – |" in md  # the dense run has no 0.9 row
    files = write_sweep(tmp_path / "out", rows, "lowrank", meta={"x": 1})
    assert files["png"].read_bytes()[:8] == PNG_MAGIC
    import json

    doc = json.loads(files["json"].read_text())
    assert doc["kind"] == "lowrank" and set(doc["runs"]) == {"dense", "other"}
    assert [r["ratio"] for r in doc["runs"]["other"]] == [0.0, 0.5, 0.9]


def test_bad_ratios_raise(data):
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        lowrank_sweep(tiny(), data, [1.0])
    with pytest.raises(ConfigError):
        filter_sweep(tiny(), data, [1.5])
    with pytest.raises(ConfigError):
        parse_ratios("0.1,abc")
    assert parse_ratios("0, 0.5,0.9") == (0.0, 0.5, 0.9)
    with pytest.raises(ConfigError, match="scheme"):
        truncate_model(tiny(), 0.5, scheme="tucker")
