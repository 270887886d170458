"""`--method sfw` (and the nuclear-penalty baseline) as trainer plug-ins."""

from __future__ import annotations

import argparse
import json
import warnings

import pytest
import torch
from torch import nn

from rankwise.data.synthetic import make_synthetic
from rankwise.errors import ConfigError
from rankwise.linalg.spectra import effective_rank
from rankwise.methods.nuclear import NuclearPenaltyConfig, NuclearRegularizer
from rankwise.methods.sfw import (
    SFW_CONSTRAINTS,
    SFWConfig,
    parse_k,
    rank_summary,
)
from rankwise.optim import SFW, make_param_groups
from rankwise.train import Hook, TrainConfig, Trainer
from rankwise.train.recipes import get_recipe

torch.set_num_threads(1)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(x.mean(dim=(2, 3)))


def _data():
    return (make_synthetic(True, 128, (3, 8, 8), num_classes=5, seed=1),
            make_synthetic(False, 64, (3, 8, 8), num_classes=5, seed=1))


def _fit(out, method=None, cfg=None, lr=0.05, epochs=2, resume=False):
    torch.manual_seed(0)
    model = Tiny()
    train, test = _data()
    tc = TrainConfig(epochs=epochs, batch_size=32, lr=lr, seed=0, quiet=True, augment=False,
                     schedule="none", weight_decay=0.0)
    opt = method.make_optimizer(model, tc, cfg) if method is not None else None
    hooks = method.hooks(cfg) if method is not None else []
    trainer = Trainer(model, tc, train, test, out, hooks=hooks, optimizer=opt,
                      meta={"input_shape": [3, 8, 8]})
    trainer.fit(resume=resume)
    return trainer


def _erank(w: torch.Tensor) -> float:
    return effective_rank(torch.linalg.svdvals(w.detach().double().reshape(w.shape[0], -1)))


@pytest.mark.parametrize("constraint", ["nuclear", "spectral-k-support"])
def test_sfw_lowers_effective_rank_vs_sgd_same_seed(tmp_path, constraint):
    sgd = _fit(tmp_path / "sgd", lr=0.5)
    cfg = SFWConfig(constraint=constraint, k=0.3, width=1.0, sweep="none")
    sfw = _fit(tmp_path / "sfw", get_recipe("sfw"), cfg, lr=0.5)
    assert isinstance(sfw.optimizer, SFW)
    for name in ("c1", "c2"):
        e_sgd = _erank(sgd.model.get_submodule(name).weight)
        e_sfw = _erank(sfw.model.get_submodule(name).weight)
        assert e_sfw < 0.8 * e_sgd, (name, e_sfw, e_sgd)
    summary = get_recipe("sfw").finalize(sfw, cfg)
    assert summary["feasible"] and summary["max_norm_ratio"] <= 1 + 1e-4
    assert summary["constrained_groups"] == 6  # 2 conv weights + 2 conv biases + fc w, b
    assert summary["weighted_erank_ratio"] < rank_summary(sgd.model)["weighted_erank_ratio"]
    report = json.loads((tmp_path / "sfw" / "sfw_report.json").read_text())
    assert report["feasibility"]["feasible"] and report["config"]["constraint"] == constraint


@pytest.mark.parametrize("constraint", SFW_CONSTRAINTS)
def test_every_constraint_trains_and_ends_feasible(tmp_path, constraint):
    cfg = SFWConfig(constraint=constraint, k=0.3, width=1.0, sweep="none")
    trainer = _fit(tmp_path, get_recipe("sfw"), cfg, lr=0.5, epochs=1)
    for g in trainer.optimizer.param_groups:
        c = g["constraint"]
        assert c.norm(g["params"]) <= c.radius * (1 + 1e-4), (constraint, g["name"])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_lr_schedule_acts_on_every_sfw_group_per_iteration(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    train, test = _data()
    tc = TrainConfig(epochs=1, batch_size=32, lr=0.4, quiet=True, augment=False,
                     schedule="cosine", weight_decay=0.0)
    opt = get_recipe("sfw").make_optimizer(model, tc, SFWConfig(sweep="none"))
    seen = []

    class Spy(Hook):
        def after_step(self, trainer, step):
            seen.append({round(g["lr"], 9) for g in trainer.optimizer.param_groups})

    Trainer(model, tc, train, test, tmp_path, hooks=[Spy()], optimizer=opt).fit()
    assert all(len(lrs) == 1 for lrs in seen)  # all groups share the scheduled lr
    lrs = [lrs.pop() for lrs in seen]
    assert len(lrs) == 4 and lrs[0] == pytest.approx(0.4)
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.4  # cosine decay, per step


def test_make_optimizer_shifts_init_warns_on_wd_and_maps_options():
    torch.manual_seed(0)
    model = Tiny()
    cfg = SFWConfig(constraint="nuclear", width=0.5, rescale="none", momentum=0.5,
                    momentum_style="ema")
    groups = make_param_groups(model, constraint="nuclear", width=0.5)
    outside = [g["name"] for g in groups
               if g["constraint"].norm(g["params"]) > g["constraint"].radius]
    assert "c1.weight" in outside  # the default init is not in this small ball
    tc = TrainConfig(lr=0.3, weight_decay=5e-4)
    with pytest.warns(UserWarning, match="weight decay"):
        opt = get_recipe("sfw").make_optimizer(model, tc, cfg)
    assert isinstance(opt, SFW)
    for g in opt.param_groups:
        assert g["constraint"].norm(g["params"]) <= g["constraint"].radius * (1 + 1e-5), g["name"]
        assert (g["lr"], g["rescale"], g["momentum"], g["momentum_style"]) == \
            (0.3, None, 0.5, "ema")
        assert "weight_decay" not in g
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_recipe("sfw").make_optimizer(Tiny(), TrainConfig(weight_decay=0.0), cfg)


def test_resume_matches_straight_run(tmp_path):
    cfg = SFWConfig(constraint="spectral-k-support", k=2, width=1.0, sweep="none")
    straight = _fit(tmp_path / "a", get_recipe("sfw"), cfg, lr=0.5, epochs=2)
    _fit(tmp_path / "b", get_recipe("sfw"), cfg, lr=0.5, epochs=1)
    resumed = _fit(tmp_path / "b", get_recipe("sfw"), cfg, lr=0.5, epochs=2, resume=True)
    for k, v in straight.model.state_dict().items():
        assert torch.allclose(v, resumed.model.state_dict()[k], atol=1e-6), k


def test_parse_k_and_config_validation_and_roundtrip():
    assert parse_k("8") == 8 and isinstance(parse_k("8"), int)
    assert parse_k("0.3") == 0.3 and isinstance(parse_k("1.0"), float)
    with pytest.raises(ConfigError):
        parse_k("many")
    for bad in (dict(constraint="frobenius"), dict(k=1.5), dict(k=0), dict(width=0.0),
                dict(rescale="adam"), dict(momentum=1.0), dict(momentum_style="nesterov"),
                dict(sweep="all"), dict(sweep_ratios=(0.5, 1.0))):
        with pytest.raises(ConfigError):
            SFWConfig(**bad)
    cfg = SFWConfig(constraint="group-k-support", k=4, sweep_ratios=(0.0, 0.5))
    assert cfg.sweep_kinds() == ("filters",)
    assert SFWConfig().sweep_kinds() == ("lowrank",)
    assert SFWConfig(sweep="both").sweep_kinds() == ("lowrank", "filters")
    method = get_recipe("sfw")
    back = method.config_from_dict(json.loads(json.dumps(method.config_to_dict(cfg))))
    assert back == cfg and isinstance(back.k, int)


def test_flags_reach_the_config():
    method = get_recipe("sfw")
    parser = argparse.ArgumentParser()
    method.add_arguments(parser)
    args = parser.parse_args(["--sfw-constraint", "k-support", "--sfw-k", "0.1", "--sfw-width",
                              "3", "--sfw-rescale", "none", "--sfw-momentum", "0.8",
                              "--sfw-momentum-style", "ema", "--sfw-sweep-ratios", "0,0.3"])
    cfg = method.config_from_args(args)
    assert (cfg.constraint, cfg.k, cfg.width, cfg.rescale, cfg.momentum, cfg.momentum_style) == \
        ("k-support", 0.1, 3.0, "none", 0.8, "ema")
    assert cfg.sweep_ratios == (0.0, 0.3)


@pytest.mark.parametrize(("constraint", "kind"), [("spectral-k-support", "lowrank"),
                                                   ("group-k-support", "filters")])
def test_cli_train_sfw_end_to_end_iterates_feasible(tmp_path, constraint, kind):
    from rankwise.cli import main
    from rankwise.io.model_file import load

    out = tmp_path / "run"
    rc = main(["train", "--model", "smallcnn", "--width", "4", "--dataset", "synthetic",
               "--synthetic-size", "96", "--limit-test", "48", "--epochs", "1",
               "--batch-size", "32", "--lr", "0.5", "--wd", "0", "--device", "cpu", "--quiet",
               "--num-threads", "1", "--out", str(out), "--method", "sfw",
               "--sfw-constraint", constraint, "--sfw-k", "0.5", "--sfw-width", "2",
               "--sfw-sweep-ratios", "0,0.5"])
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "sfw"
    assert config["method_config"]["constraint"] == constraint
    summary = json.loads((out / "summary.json").read_text())["method_report"]
    assert summary["feasible"] is True
    for name in ("sweep.json", "sweep.md", "sweep.png"):
        assert (out / f"sweep-{kind}" / name).is_file()
    sweep = json.loads((out / f"sweep-{kind}" / "sweep.json").read_text())
    assert [r["ratio"] for r in sweep["runs"]["sfw"]] == [0.0, 0.5]
    # independent check: rebuild the constraint sets from the saved model and the same options
    model = load(out)
    groups = make_param_groups(model, constraint=constraint, k=0.5, width=2.0)
    assert len(groups) == len(list(model.parameters()))
    for g in groups:
        c = g["constraint"]
        assert c.norm(g["params"]) <= c.radius * (1 + 1e-4), g["name"]


def test_nuclear_penalty_adds_full_svd_subgradient_to_every_conv(tmp_path):
    method = get_recipe("nuclear-penalty")
    cfg = NuclearPenaltyConfig(weight=0.01, sweep_ratios=(0.0, 0.5))
    torch.manual_seed(0)
    model = Tiny()
    reg = NuclearRegularizer(model, cfg)
    assert set(reg.trp.targets) == {"c1", "c2"}  # the first conv too (TRP skips it by default)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    reg.before_forward(0)
    reg.after_backward(0)
    for conv in (model.c1, model.c2):
        u, _, vh = torch.linalg.svd(conv.weight.detach().double().flatten(1),
                                    full_matrices=False)
        expected = (0.01 * u @ vh).reshape(conv.weight.shape)
        assert torch.allclose(conv.weight.grad.double(), expected, atol=1e-6)
        assert torch.equal(conv.bias.grad, torch.zeros_like(conv.bias))
    assert torch.equal(model.fc.weight.grad, torch.zeros_like(model.fc.weight))

    trained = _fit(tmp_path, method, cfg, epochs=1)
    summary = method.finalize(trained, cfg)
    assert [r["ratio"] for r in summary["sweeps"]["lowrank"]] == [0.0, 0.5]
    assert (tmp_path / "sweep-lowrank" / "sweep.png").is_file()
