"""Trained Rank Pruning: per-step math, the `TRP` object, the recipe, finalize/report, CLI."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rankwise.errors import ConfigError
from rankwise.linalg.spectra import effective_rank, energy_rank
from rankwise.methods.trp import TRP, TRPConfig
from rankwise.methods.trp_ops import batched_energy_ranks, trp_flops, trp_project
from rankwise.methods.trp_targets import find_targets

torch.set_num_threads(1)


class Tiny(nn.Module):
    """stem 3×3 (first conv), two 3×3 targets (one strided), a 1×1 conv and an FC."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 12, 3, padding=1)
        self.down = nn.Conv2d(12, 12, 3, stride=2, padding=1)
        self.point = nn.Conv2d(12, 12, 1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.body(x))
        x = torch.relu(self.down(x))
        x = torch.relu(self.point(x))
        return self.fc(x.mean(dim=(2, 3)))


def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def reference_matrix(w: torch.Tensor, scheme: str) -> torch.Tensor:
    """The matricization written out independently of trp_ops (float64)."""
    n, c, kh, kw = w.shape
    if scheme == "channel":
        return w.detach().double().reshape(n, c * kh * kw)
    return w.detach().double().permute(0, 3, 1, 2).reshape(n * kw, c * kh)


def trp_hooks(cfg: TRPConfig) -> list:
    from rankwise.train.recipes import get_recipe

    return get_recipe("trp").hooks(cfg)


# ----- pure math -----------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(rows=st.lists(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=8), min_size=1,
                     max_size=4),
       energy=st.floats(0.05, 1.0))
def test_batched_energy_ranks_match_energy_rank(rows, energy):
    k = max(len(r) for r in rows)
    s = torch.tensor([sorted(r + [0.0] * (k - len(r)), reverse=True) for r in rows])
    got = batched_energy_ranks(s, energy).tolist()
    assert got == [energy_rank(row, energy) for row in s]


def test_subgradient_of_diag_3_2_1_by_hand():
    # σ² = 9, 4, 1: 9/14 < 0.9 ≤ 13/14, so r = 2; S = diag(1, 1, 0), approx = diag(3, 2, 0).
    w = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)).unsqueeze(0)
    low, sub, ranks = trp_project(w, 0.9)
    assert ranks.tolist() == [2]
    torch.testing.assert_close(sub[0], torch.diag(torch.tensor([1.0, 1.0, 0.0],
                                                               dtype=torch.float64)))
    torch.testing.assert_close(low[0], torch.diag(torch.tensor([3.0, 2.0, 0.0],
                                                               dtype=torch.float64)))


def test_subgradient_of_rotated_matrix_by_hand():
    # W = Q diag(3, 2, 1) Rᵀ, Q = 90° about z, R = 45° about z (c = s = 1/√2):
    # S = Q diag(1, 1, 0) Rᵀ = [[s, -c, 0], [c, s, 0], [0, 0, 0]].
    h = 1 / math.sqrt(2)
    q = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    r = torch.tensor([[h, -h, 0.0], [h, h, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    w = q @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ r.T
    expected = torch.tensor([[h, -h, 0.0], [h, h, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    _, sub, ranks = trp_project(w.unsqueeze(0), 0.9)
    assert ranks.tolist() == [2]
    torch.testing.assert_close(sub[0], expected)


def test_mixed_ranks_in_one_batch():
    eye = torch.eye(4, dtype=torch.float64)
    flat = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    steep = torch.diag(torch.tensor([10.0, 0.1, 0.1, 0.1], dtype=torch.float64))
    low, sub, ranks = trp_project(torch.stack([flat, steep]), 0.9)
    assert ranks.tolist() == [4, 1]
    torch.testing.assert_close(sub[0], eye)
    torch.testing.assert_close(low[1], torch.diag(torch.tensor([10.0, 0, 0, 0],
                                                               dtype=torch.float64)))


# ----- the TRP object ----------------------------------------------------------------------


def test_default_targets_skip_first_conv_1x1_and_fc():
    m = tiny()
    assert find_targets(m, TRPConfig()) == ["body", "down"]
    wide = TRPConfig(include_first_conv=True, include_1x1=True, include_linear=True)
    assert find_targets(m, wide) == ["stem", "body", "down", "point", "fc"]
    assert find_targets(m, TRPConfig(targets=("d*",))) == ["down"]


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_trp_step_cuts_each_target_to_its_energy_rank(scheme):
    m = tiny(1)
    before = {n: reference_matrix(m.get_submodule(n).weight, scheme) for n in ("body", "down")}
    hook = TRP(m, scheme=scheme, energy=0.7)
    hook.before_forward(0)
    for name, mat in before.items():
        r = energy_rank(torch.linalg.svdvals(mat), 0.7)
        assert r < min(mat.shape)  # the cut is a real cut
        after = reference_matrix(m.get_submodule(name).weight, scheme)
        assert int(torch.linalg.matrix_rank(after, rtol=1e-5)) <= r
        assert hook.last_ranks[name] == r
        # the kept part is the Eckart-Young optimum of the old weight
        u, s, vh = torch.linalg.svd(mat)
        torch.testing.assert_close(after, (u[:, :r] * s[:r]) @ vh[:r], atol=1e-5, rtol=1e-4)


def test_first_conv_and_1x1_untouched():
    m = tiny(2)
    keep = {n: m.get_submodule(n).weight.detach().clone() for n in ("stem", "point", "fc")}
    hook = TRP(m, nuclear_weight=0.5)
    hook.before_forward(0)
    m(torch.randn(2, 3, 8, 8)).square().sum().backward()
    grads = {n: m.get_submodule(n).weight.grad.clone() for n in ("stem", "point", "fc", "body")}
    hook.after_backward(0)
    for n, w in keep.items():
        assert torch.equal(m.get_submodule(n).weight, w)
        assert torch.equal(m.get_submodule(n).weight.grad, grads[n])
    assert not torch.equal(m.body.weight.grad, grads["body"])  # the target did get λ·S


def test_nuclear_subgradient_equals_hand_value_on_a_conv():
    # conv weight (3, 1, 1, 3): its channel matricization is the 3×3 matrix diag(3, 2, 1).
    model = nn.Sequential(nn.Conv2d(3, 1, 3), nn.Conv2d(1, 3, (1, 3)))
    with torch.no_grad():
        model[1].weight.copy_(torch.diag(torch.tensor([3.0, 2.0, 1.0])).reshape(3, 1, 1, 3))
    lam = 0.25
    hook = TRP(model, TRPConfig(nuclear_weight=lam, trp=False))
    hook.before_forward(0)
    model[1].weight.grad = torch.zeros_like(model[1].weight)
    hook.after_backward(0)
    expected = lam * torch.diag(torch.tensor([1.0, 1.0, 0.0])).reshape(3, 1, 1, 3)
    torch.testing.assert_close(model[1].weight.grad, expected)
    assert torch.equal(model[1].weight.reshape(3, 3), torch.diag(torch.tensor([3.0, 2.0, 1.0])))


@pytest.mark.parametrize("trp", [False, True])
def test_nuclear_term_and_truncation_only_every_m_steps(trp):
    m = tiny(3)
    hook = TRP(m, period=3, nuclear_weight=0.1, trp=trp)
    applied, changed = [], []
    for step in range(7):
        w0 = m.body.weight.detach().clone()
        hook.before_forward(step)
        hook.before_forward(step)  # a second micro-batch of the same step: no second cut
        changed.append(not torch.equal(m.body.weight, w0))
        m.body.weight.grad = torch.zeros_like(m.body.weight)
        hook.after_backward(step)
        hook.after_backward(step)  # applied once per step, however often it is called
        applied.append(bool(m.body.weight.grad.abs().sum() > 0))
        with torch.no_grad():  # an "SGD step" that brings the rank back up
            m.body.weight.add_(0.05 * torch.randn_like(m.body.weight))
    assert applied == [s % 3 == 0 for s in range(7)]
    assert changed == [trp and s % 3 == 0 for s in range(7)]
    assert hook.trp_steps == 3 and hook.state_dict()["last_step"] == 6


def test_inactive_when_no_trp_and_no_nuclear_weight():
    m = tiny(4)
    w0 = m.body.weight.detach().clone()
    hook = TRP(m, trp=False, nuclear_weight=0.0)
    hook.before_forward(0)
    assert torch.equal(m.body.weight, w0) and hook.trp_steps == 0


def test_state_dict_roundtrip():
    m = tiny(5)
    hook = TRP(m)
    hook.before_forward(0)
    state = hook.state_dict()
    other = TRP(tiny(6))
    other.load_state_dict(json.loads(json.dumps(state)))
    assert other.state_dict() == state and set(state["last_ranks"]) == {"body", "down"}


@pytest.mark.parametrize("kw", [dict(energy=0.0), dict(energy=1.5), dict(period=0),
                                dict(nuclear_weight=-1e-4), dict(value_threshold=-0.1),
                                dict(scheme="xx"), dict(counting="flops"), dict(energy_on="s3"),
                                dict(retrain=-1),
                                dict(decompose_rank="energy:2")])
def test_config_errors(kw):
    with pytest.raises(ConfigError):
        TRPConfig(**kw)


# ----- training with the Trainer -------------------------------------------------------------


def _data():
    from rankwise.data import make_synthetic

    return (make_synthetic(True, 128, (3, 8, 8), num_classes=5, seed=1),
            make_synthetic(False, 64, (3, 8, 8), num_classes=5, seed=1))


def _fit(tmp_path, hooks, epochs=2, seed=0, resume=False, model=None):
    from rankwise.train import TrainConfig, Trainer

    train, test = _data()
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=0.05, seed=seed, quiet=True,
                      augment=False, milestones=[])
    trainer = Trainer(model if model is not None else tiny(seed), cfg, train, test, tmp_path,
                      hooks=hooks, meta={"input_shape": [3, 8, 8]})
    trainer.fit(resume=resume)
    return trainer


def _erank(w: torch.Tensor) -> float:
    return effective_rank(torch.linalg.svdvals(reference_matrix(w, "channel")))


def test_short_run_lowers_effective_rank_vs_plain(tmp_path):
    plain = _fit(tmp_path / "plain", [])
    trp = _fit(tmp_path / "trp", trp_hooks(TRPConfig()))
    for name in ("body", "down"):
        e_plain = _erank(plain.model.get_submodule(name).weight)
        e_trp = _erank(trp.model.get_submodule(name).weight)
        assert e_trp < 0.9 * e_plain, (name, e_trp, e_plain)


def test_resume_is_exact(tmp_path):
    straight = _fit(tmp_path / "a", trp_hooks(TRPConfig(period=3)), epochs=2)
    _fit(tmp_path / "b", trp_hooks(TRPConfig(period=3)), epochs=1)
    resumed = _fit(tmp_path / "b", trp_hooks(TRPConfig(period=3)), epochs=2, resume=True)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert straight.hooks[0].state_dict() == resumed.hooks[0].state_dict()


@pytest.mark.parametrize("scheme", ["channel", "spatial", "nd"])
def test_decomposition_at_training_ranks_reproduces_outputs(tmp_path, scheme):
    from rankwise.layers import FORMATS

    cfg = TRPConfig(scheme=scheme)
    run = _fit(tmp_path / "trp", trp_hooks(cfg))
    trained, hook = run.model, run.hooks[0].method
    plain = _fit(tmp_path / "plain", []).model
    hook.project(step=10**6)  # the truncation of the next step: exactly rank r per target
    ranks = hook.last_ranks
    x = torch.randn(16, 3, 8, 8)

    def rel_error(model: nn.Module) -> float:
        fact = copy.deepcopy(model)
        for name, r in ranks.items():
            layer = FORMATS[scheme].from_dense(model.get_submodule(name), r)
            assert layer.rank == r
            setattr(fact, name, layer)
        with torch.no_grad():
            ref, out = model.eval()(x), fact.eval()(x)
        return float((out - ref).norm() / ref.norm())

    assert rel_error(trained) < 1e-4
    assert rel_error(plain) > 1e-3  # the same assertion fails on an ordinary model


def test_finalize_writes_factorized_model_and_report(tmp_path):
    from rankwise.io.model_file import load
    from rankwise.train.recipes import get_recipe

    cfg = TRPConfig()
    method = get_recipe("trp")
    trainer = _fit(tmp_path, method.hooks(cfg))
    summary = method.finalize(trainer, cfg)
    report = json.loads((tmp_path / "trp_report.json").read_text())
    assert "| body |" in (tmp_path / "trp_report.md").read_text()
    rows = {r["name"]: r for r in report["layers"]}
    assert set(rows) == {"body", "down"}
    # TRP counting by hand: body is 12×8×3×3 on 8×8 output pixels, down on 4×4
    body, down = rows["body"], rows["down"]
    assert body["trp_flops_before"] == 12 * 8 * 9 * 64
    assert down["trp_flops_before"] == 12 * 12 * 9 * 16
    r = body["rank"]
    assert body["trp_flops_after"] == (8 * 9 * r + r * 12) * 64
    trp = report["counting"]["reference"]
    stem_point = 8 * 3 * 9 * 64 + 12 * 12 * 16
    assert trp["flops_before"] == stem_point + body["trp_flops_before"] + down["trp_flops_before"]
    assert summary["acc_dense"] == report["accuracy"]["dense"]
    assert abs(summary["acc_factorized"] - summary["acc_dense"]) <= 0.05
    fact = load(tmp_path / "factorized", model=Tiny())
    x = torch.randn(16, 3, 8, 8)
    with torch.no_grad():  # already low-rank: the σ < 0.05 tail is the last steps' noise
        ref = trainer.model.eval()(x)
        assert float((fact(x) - ref).norm() / ref.norm()) < 1e-2
    assert type(fact.body).__name__ == "ChannelLowRankConv2d" and fact.body.rank == r
    assert isinstance(fact.stem, nn.Conv2d) and isinstance(fact.point, nn.Conv2d)
    assert trp_flops(trainer.model, [], (3, 8, 8))["flops_before"] == trp["flops_before"]


def test_cli_train_trp_end_to_end(tmp_path):
    from rankwise.cli import main
    from rankwise.io.model_file import load

    out = tmp_path / "run"
    rc = main(["train", "--model", "resnet20", "--width", "4", "--dataset", "synthetic",
               "--synthetic-size", "64", "--epochs", "1", "--batch-size", "32", "--out", str(out),
               "--device", "cpu", "--quiet", "--method", "trp", "--trp-scheme", "spatial",
               "--trp-period", "2", "--nuclear-weight", "1e-3", "--retrain", "1",
               "--trp-counting", "trp"])
    assert rc == 0
    report = json.loads((out / "trp_report.json").read_text())
    assert report["config"]["scheme"] == "spatial" and report["config"]["period"] == 2
    assert report["config"]["nuclear_weight"] == 1e-3 and report["config"]["retrain"] == 1
    assert report["accuracy"]["retrained"] is not None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method_report"]["counting"] == "reference"  # "trp" is its old name
    fact = load(out / "factorized")
    kinds = {type(m).__name__ for m in fact.modules()}
    assert "SpatialLowRankConv2d" in kinds or all(r["format"] is None for r in report["layers"])
    assert fact(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith("trp_rank/") for row in metrics for k in row)
