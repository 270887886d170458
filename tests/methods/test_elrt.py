"""ELRT: factorized-from-scratch models, the orthogonality penalty, training, save/load."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch import nn

import rankwise
from rankwise.data import load_dataset
from rankwise.errors import ConfigError
from rankwise.layers import FORMATS
from rankwise.layers.base import FactorizedLayer
from rankwise.layers.shapes import ConvSpec
from rankwise.methods.elrt import (
    ELRT,
    ELRTConfig,
    build_factorized,
    build_model,
)
from rankwise.methods.regularizers import gram_deviation, orthogonality_penalty
from rankwise.train.recipes import RECIPES as METHODS

SHAPE = (3, 12, 12)


class TinyCNN(nn.Module):
    """conv(3→16) → conv(16→16) → conv(16→24, s2) → 1×1 conv(24→24) → depthwise 3×3 → fc."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24),
                                  nn.ReLU(), nn.Conv2d(24, 24, 1), nn.BatchNorm2d(24), nn.ReLU())
        self.tiny = nn.Conv2d(24, 24, 3, padding=1, groups=24)  # depthwise: cannot save
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = self.tiny(self.body(x))
        return self.fc(x.mean((2, 3)))


def meta_tiny() -> nn.Module:
    with torch.device("meta"):
        return TinyCNN()


def dense_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(m.weight.shape) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


# ----- the orthogonality penalty ----------------------------------------------------------------
def test_penalty_and_gradient_by_hand():
    u = torch.tensor([[1.0, 2.0], [0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    # UᵀU = [[2, 2], [2, 5]], minus I = [[1, 2], [2, 4]] -> 1 + 4 + 4 + 16
    pen = gram_deviation(u)
    assert float(pen.detach()) == 25.0
    pen.backward()
    # d/dU = 4·U·(UᵀU − I) = 4·[[5, 10], [2, 4], [1, 2]]
    expected = torch.tensor([[20.0, 40.0], [8.0, 16.0], [4.0, 8.0]])
    assert torch.equal(u.grad, expected)
    assert float(gram_deviation(u.detach().T)) == 25.0  # wide: Gram of the smaller side


def test_penalty_orientation_on_tucker2_layer():
    layer = FORMATS["tucker2"].from_spec(ConvSpec(8, 12, (3, 3), padding=1), (5, 3))
    from rankwise.layers.init import init_factorized_

    init_factorized_(layer, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(layer)
    assert float(orthogonality_penalty(model).detach()) < 1e-10
    with torch.no_grad():
        layer.first.weight.mul_(2.0)  # U_in = 2·Q: UᵀU = 4·I_3 -> (4 − 1)²·3
    assert float(orthogonality_penalty(model).detach()) == pytest.approx(27.0, rel=1e-5)


# ----- building from specs ----------------------------------------------------------------------
def test_meta_model_has_no_full_size_weight():
    base = meta_tiny()
    shapes = dense_shapes(base)
    model, report = build_factorized(base, ELRTConfig(rank="ratio:0.25", seed=0), SHAPE)
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    replaced = {r.name: r for r in report.rows if r.format is not None}
    assert set(replaced) == {"body.0", "body.3", "body.6"}
    assert isinstance(model.body[0], FactorizedLayer) and model.body[0].format == "tucker2"
    assert model.body[6].format == "channel"  # 1×1 conv
    replaced_shapes = {shapes[n] for n in replaced}
    assert not any(tuple(p.shape) in replaced_shapes for p in model.parameters())
    # parameter count = factorized costs (closed form) + untouched modules, counted separately
    untouched = sum(p.numel() for n, p in TinyCNN().named_parameters()
                    if n.rpartition(".")[0] not in replaced)
    fact = sum(FORMATS[r.format].cost(dense_spec(TinyCNN(), n), r.rank)[0]
               for n, r in replaced.items())
    assert sum(p.numel() for p in model.parameters()) == untouched + fact
    notes = {r.name: r.note for r in report.rows}
    assert "first conv" in notes["stem"] and "classifier" in notes["fc"]
    assert "kept dense" in notes["tiny"] and "does not save" in notes["tiny"]
    assert model(torch.randn(2, *SHAPE)).shape == (2, 4)


def dense_spec(model: nn.Module, name: str) -> ConvSpec:
    from rankwise.layers.base import dense_spec_of

    return dense_spec_of(model.get_submodule(name))


def test_resnet20_budget_and_skips():
    dense = sum(p.numel() for p in rankwise.create_model("resnet20").parameters())
    model, report = build_model("resnet20", ELRTConfig(rank="budget:params=0.4", seed=0))
    params = sum(p.numel() for p in model.parameters())
    assert params <= 0.4 * dense and params == report.model_params_after
    assert report.model_params_before == dense
    assert isinstance(model.conv1, nn.Conv2d) and isinstance(model.fc, nn.Linear)
    assert all(isinstance(b.conv1, FactorizedLayer) for b in model.layer3)
    _, greedy = build_model("resnet20", ELRTConfig(rank="budget:macs=0.5",
                                                   budget_allocation="greedy"))
    assert greedy.model_macs_after <= 0.5 * greedy.model_macs_before


@pytest.mark.parametrize("rank", ["energy:0.9", "value:0.05", "erank", "stable", "vbmf"])
def test_energy_based_ranks_are_refused(rank):
    with pytest.raises(ConfigError, match="from scratch"):
        ELRTConfig(rank=rank)


def test_bad_config_values():
    for kw in ({"format": "svd2"}, {"orth_weight": -1.0}, {"init_mode": "avg"},
               {"budget_allocation": "random"}):
        with pytest.raises(ConfigError):
            ELRTConfig(**kw)


def test_cli_flags_and_registration():
    assert METHODS["elrt"].config_cls is ELRTConfig and METHODS["elrt"].builds_on_meta
    parser = argparse.ArgumentParser()
    METHODS["elrt"].add_arguments(parser.add_argument_group("elrt"))
    args = parser.parse_args(["--elrt-format", "cp", "--elrt-rank", "budget:macs=0.3",
                              "--elrt-orth-weight", "0.01", "--no-elrt-skip-first-conv",
                              "--elrt-exclude", "fc,layer1.*", "--elrt-init-dist", "uniform"])
    cfg = METHODS["elrt"].config_from_args(args)
    assert (cfg.format, cfg.rank, cfg.orth_weight) == ("cp", "budget:macs=0.3", 0.01)
    assert cfg.skip_first_conv is False and cfg.skip_classifier is True
    assert cfg.exclude == ("fc", "layer1.*") and cfg.init_distribution == "uniform"
    assert METHODS["elrt"].config_from_args(parser.parse_args([])) == ELRTConfig()
    d = METHODS["elrt"].config_to_dict(cfg)
    assert METHODS["elrt"].config_from_dict(json.loads(json.dumps(d))) == cfg


# ----- training, finalize, save/load ------------------------------------------------------------
def test_short_run_lowers_loss_and_reloads(tmp_path):
    from rankwise.train import TrainConfig, Trainer, read_metrics

    method = METHODS["elrt"]
    cfg = ELRTConfig(rank="ratio:0.25", orth_weight=1e-2, seed=0, log_every=4)
    torch.manual_seed(0)
    model = method.prepare_model(meta_tiny(), cfg, SHAPE)
    train = load_dataset("synthetic", True, size=256, shape=SHAPE, num_classes=4, seed=0)
    test = load_dataset("synthetic", False, size=64, shape=SHAPE, num_classes=4, seed=0)
    tcfg = TrainConfig(epochs=5, batch_size=32, lr=0.05, milestones=[], quiet=True,
                       augment=False, log_every=4, num_threads=1)
    trainer = Trainer(model, tcfg, train, test, tmp_path, hooks=method.hooks(cfg),
                      meta={"input_shape": list(SHAPE)})
    trainer.fit()
    rows = read_metrics(tmp_path)
    epochs = [r for r in rows if r.get("event") == "epoch"]
    assert epochs[-1]["train_loss"] < 0.8 * epochs[0]["train_loss"]
    assert all("orth_penalty" in r for r in epochs)
    assert any(r.get("event") == "elrt" and r["orth_penalty"] >= 0 for r in rows)
    out = method.finalize(trainer, cfg)
    report = json.loads((tmp_path / "elrt_report.json").read_text())
    assert report["format"] == "tucker2" and report["params_ratio"] < 1
    assert report["params"] == sum(p.numel() for p in trainer.model.parameters())
    assert {r["name"] for r in report["layers"]} == {"body.0", "body.3", "body.6"}
    assert 0.0 <= report["test_acc"] <= 1.0 and out["test_acc"] == report["test_acc"]
    loaded = rankwise.load(tmp_path, model=TinyCNN())
    x = torch.randn(3, *SHAPE)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), trainer.model.cpu()(x))


def test_object_penalty_is_weighted_and_checkpoints():
    model, _ = build_factorized(meta_tiny(), ELRTConfig(seed=0), SHAPE)
    with torch.no_grad():
        model.body[0].last.weight.mul_(1.5)
    elrt = ELRT(model, orth_weight=0.1)
    extra = elrt.penalty().detach()  # type: ignore[union-attr]
    assert float(extra) == pytest.approx(0.1 * float(orthogonality_penalty(model).detach()))
    assert float(extra) > 0 and elrt.last_penalty == pytest.approx(float(extra) / 0.1)
    assert ELRT(model, orth_weight=0.0).penalty() is None
    other = ELRT(model, orth_weight=0.1)
    other.load_state_dict(elrt.state_dict())
    assert other.last_penalty == elrt.last_penalty
    # add_penalty_grad: the same gradient as adding the penalty to the loss
    model.zero_grad()
    elrt.add_penalty_grad()
    g = model.body[0].last.weight.grad.clone()
    model.zero_grad()
    elrt.penalty().backward()  # type: ignore[union-attr]
    assert torch.equal(g, model.body[0].last.weight.grad)


def test_build_from_name_and_finalize_report():
    elrt = ELRT.build("resnet20", rank="ratio:0.3", seed=1, model_kwargs={"width": 4})
    assert elrt.input_shape == (3, 32, 32) and elrt.build_report is not None
    assert any(isinstance(m, FactorizedLayer) for m in elrt.model.modules())
    model, report = elrt.finalize()
    assert model is elrt.model and report["params_ratio"] < 1
    assert report["params"] == sum(p.numel() for p in model.parameters())


def test_saved_resnet_reloads_identically(tmp_path):
    model, _ = build_model("resnet20", ELRTConfig(format="cp", rank="ratio:0.3", seed=1))
    model.eval()
    rankwise.save(model, tmp_path, arch="resnet20", arch_kwargs={}, input_shape=(3, 32, 32))
    loaded = rankwise.load(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_format_table_equal_params():
    from rankwise.bench.elrt_formats import elrt_format_table

    rows = elrt_format_table("resnet20", ("tucker2", "channel", "spatial", "cp"), 0.5)
    assert [r["format"] for r in rows] == ["tucker2", "channel", "spatial", "cp"]
    for r in rows:
        assert r["error"] is None and r["params"] <= 0.5 * r["dense_params"]
        assert r["params"] >= 0.4 * r["dense_params"]  # the budget is used, not wasted
        assert r["macs"] < r["dense_macs"] and r["factorized"] > 0


def test_rank_multiple_and_real_base_model():
    from rankwise.methods.elrt import round_rank

    assert round_rank((9, 19, 3), (16, 32, 4), 8) == (8, 16, 4)
    assert round_rank((9, 19), (16, 32), 1) == (9, 19)
    _, report = build_model("resnet20", ELRTConfig(rank="budget:macs=0.4", rank_multiple=8))
    ranks = [x for r in report.rows if r.rank is not None for x in r.rank]
    assert ranks and all(x % 8 == 0 for x in ranks)
    assert report.model_macs_after <= 0.4 * report.model_macs_before
    torch.manual_seed(0)
    base = TinyCNN()  # a real (non-meta) base: untouched layers keep their weights
    stem = base.stem.weight.detach().clone()
    model, _ = build_factorized(base, ELRTConfig(seed=0), SHAPE)
    assert torch.equal(model.stem.weight, stem) and isinstance(model.body[0], FactorizedLayer)


class TokenMLP(nn.Module):
    """Token ids → logits through an embedding, two linears on every token and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.up, self.down, self.head = nn.Linear(32, 64), nn.Linear(64, 32), nn.Linear(32, 4)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids)
        return self.head((h + self.down(torch.relu(self.up(h)))).mean(1))


@pytest.mark.parametrize("meta", [False, True])
def test_token_model_is_built_on_its_keyword_inputs(meta):
    """A model that takes token ids cannot be traced on zeros of an input shape: `build` takes
    `example_inputs` (also for a model on meta), and `finalize` counts on the same inputs."""
    from collections import UserDict

    if meta:
        with torch.device("meta"):
            base = TokenMLP()
    else:
        base = TokenMLP()
    ids = UserDict(input_ids=torch.zeros(1, 10, dtype=torch.long))  # a tokenizer's output
    with pytest.raises(ConfigError, match="example_inputs"):
        ELRT.build(TokenMLP(), format="tucker2", linear_format="svd", rank="ratio:0.5")
    elrt = ELRT.build(base, format="tucker2", linear_format="svd", rank="ratio:0.5", seed=0,
                      skip_classifier=True, example_inputs=ids)
    kinds = {n: type(m).__name__ for n, m in elrt.model.named_children()}
    assert kinds["up"] == kinds["down"] == "LowRankLinear" and kinds["head"] == "Linear"
    assert not any(t.is_meta for t in elrt.model.parameters())
    model, report = elrt.finalize()
    up, down = 10 * 16 * (32 + 64), 10 * 16 * (64 + 32)  # rank 16 = 0.5 of min(in, out) = 32
    assert report["macs"] == up + down + 32 * 4
    assert report["dense_macs"] == 10 * 32 * 64 * 2 + 32 * 4
    assert model(input_ids=torch.randint(0, 50, (3, 10))).shape == (3, 4)
