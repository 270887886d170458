"""Subspace training (DLDR): sampling, restart, phase-2 span, resume, report, CLI end-to-end."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from rankwise.cli import main
from rankwise.data import BatchLoader, load_dataset
from rankwise.errors import ConfigError
from rankwise.methods.subspace import BASIS, REPORT, SubspaceConfig, SubspaceTraining
from rankwise.models import create_model
from rankwise.optim.psgd import ProjectedBFGS, ProjectedSGD, flat_params, write_flat_
from rankwise.train import TrainConfig, Trainer, read_metrics
from rankwise.train.method_hooks import SubspaceHook
from rankwise.train.recipes import RECIPES as METHODS

torch.set_num_threads(1)
CNN = ["--model", "smallcnn", "--width", "4", "--dataset", "synthetic", "--limit-train", "192",
       "--limit-test", "96", "--batch-size", "32", "--lr", "0.05", "--milestones", "",
       "--device", "cpu", "--quiet", "--num-threads", "1", "--method", "subspace"]


def train(out: Path, epochs: int, *extra: str) -> dict:
    assert main(["train", *CNN, "--epochs", str(epochs), "--out", str(out), *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def in_span_residual(theta: torch.Tensor, ref: torch.Tensor, p: torch.Tensor) -> float:
    diff = (theta - ref).double()
    p = p.double()
    return float((diff - p.T @ (p @ diff)).norm() / diff.norm())


def test_registered_with_cli_flags():
    method = METHODS["subspace"]
    assert method.config_cls is SubspaceConfig
    parser = argparse.ArgumentParser()
    method.add_arguments(parser)
    args = parser.parse_args(["--subspace-dim", "7", "--sample-epochs", "9",
                              "--subspace-optimizer", "pbfgs", "--subspace-lr", "0.5",
                              "--subspace-milestones", "3,5", "--subspace-start", "last"])
    cfg = method.config_from_args(args)
    assert (cfg.dim, cfg.sample_epochs, cfg.optimizer, cfg.lr) == (7, 9, "pbfgs", 0.5)
    assert cfg.milestones == (3, 5) and cfg.start == "last"
    assert method.config_from_dict(method.config_to_dict(cfg)) == cfg
    defaults = method.config_from_args(parser.parse_args([]))
    assert defaults == SubspaceConfig()  # DLDR's CIFAR settings: d 40, t 80, lr 1, momentum 0.9
    assert (defaults.dim, defaults.sample_epochs, defaults.momentum) == (40, 80, 0.9)


def test_config_errors_name_the_flag():
    with pytest.raises(ConfigError, match="--subspace-dim"):
        SubspaceConfig(dim=5, sample_epochs=2, samples_per_epoch=2)  # 5 centred samples: 4 dirs
    SubspaceConfig(dim=4, sample_epochs=2, samples_per_epoch=2)
    with pytest.raises(ConfigError, match="optimizer"):
        SubspaceConfig(optimizer="adam")


def small_trainer(tmp_path: Path, cfg: SubspaceConfig, epochs: int) -> tuple[Trainer, SubspaceHook]:
    kw = {"size": 128, "shape": (1, 28, 28), "num_classes": 10, "seed": 0}
    train_data = load_dataset("synthetic", True, **kw)
    test_data = load_dataset("synthetic", False, **kw)
    torch.manual_seed(0)
    model = create_model("smallcnn", num_classes=10, in_channels=1, width=4)
    hook = SubspaceHook(cfg)
    tcfg = TrainConfig(epochs=epochs, batch_size=32, lr=0.05, milestones=[], quiet=True,
                       num_threads=1)
    return Trainer(model, tcfg, train_data, test_data, tmp_path, hooks=[hook]), hook


def test_sampling_restart_and_buffers(tmp_path, monkeypatch):
    cfg = SubspaceConfig(dim=3, sample_epochs=2, samples_per_epoch=2, optimizer="pbfgs")
    trainer, hook = small_trainer(tmp_path, cfg, epochs=3)
    seen: dict = {}
    original = SubspaceTraining.switch

    def spy(self):
        seen["samples"] = torch.stack(self.samples).clone()
        seen["init_buffers"] = {k: v.clone() for k, v in self.init_buffers.items()}
        seen["before"] = flat_params(self.params)
        original(self)
        seen["after"] = flat_params(self.params)
        seen["buffers_after"] = {k: b.clone() for k, b in self.model.named_buffers()}

    monkeypatch.setattr(SubspaceTraining, "switch", spy)
    trainer.fit()
    samples = seen["samples"]
    assert samples.shape[0] == 1 + 2 * 2  # initial point + k = 2 per epoch for t = 2 epochs
    assert torch.equal(samples[-1], seen["before"])  # the last sample is the end of phase 1
    assert not torch.equal(samples[0], samples[-1])
    assert torch.equal(seen["after"], samples[0])  # start="first": back to the initial point
    for name, value in seen["init_buffers"].items():  # ... with the initial BN buffers
        assert torch.equal(seen["buffers_after"][name], value), name
    assert isinstance(trainer.optimizer, ProjectedBFGS)
    # BN stats keep updating in phase 2, once per training step: P-BFGS's line-search
    # forwards restore them, so num_batches_tracked counts exactly the phase-2 steps
    tracked = [b for n, b in trainer.model.named_buffers() if n.endswith("num_batches_tracked")]
    assert tracked and all(int(b) == trainer.steps_per_epoch for b in tracked)
    assert hook.sub.phase == "subspace" and hook.sub.basis.shape == (3, samples.shape[1])
    assert trainer.optimizer.sub_state["step"] == trainer.steps_per_epoch


def test_start_last_continues_and_psgd_is_installed(tmp_path):
    cfg = SubspaceConfig(dim=2, sample_epochs=2, start="last", momentum=0.0, milestones=())
    trainer, hook = small_trainer(tmp_path, cfg, epochs=3)
    init = flat_params([q for q in trainer.model.parameters()])
    trainer.fit()
    assert isinstance(trainer.optimizer, ProjectedSGD)
    assert trainer.lr == 1.0  # the phase-2 schedule drives the swapped optimizer
    theta = flat_params(hook.sub.params)
    assert in_span_residual(theta, hook.sub.reference, hook.sub.basis) < 1e-5
    # the reference is the end of phase 1 (the last sample), not the initial point
    assert float((hook.sub.reference - init).norm()) > 1e-3
    rows = [r for r in read_metrics(tmp_path) if r["event"] == "epoch"]
    assert [r["subspace_phase"] for r in rows] == [1, 1, 2]
    assert 0 < rows[1]["subspace_explained_variance"] <= 1


def test_epochs_must_leave_a_phase_2(tmp_path):
    trainer, _ = small_trainer(tmp_path, SubspaceConfig(dim=1, sample_epochs=2), epochs=2)
    with pytest.raises(ConfigError, match="--epochs"):
        trainer.fit()


def test_cli_end_to_end_span_loss_and_report(tmp_path):
    dense = tmp_path / "dense"
    assert main(["train", *CNN[:-2], "--epochs", "3", "--out", str(dense)]) == 0
    out = tmp_path / "sub"
    summary = train(out, 6, "--subspace-dim", "3", "--sample-epochs", "3",
                    "--subspace-optimizer", "psgd", "--subspace-lr", "0.5",
                    "--subspace-dense-run", str(dense))
    assert summary["method"] == "subspace" and summary["epoch"] == 6
    report = json.loads((out / REPORT).read_text())
    assert (report["d"], report["t"], report["samples"]) == (3, 3, 4)
    ratios = report["pca"]["explained_variance_ratio"]
    assert len(ratios) == 3 and ratios == sorted(ratios, reverse=True)
    assert 0 < report["explained_variance_ratio_total"] <= 1 + 1e-6
    assert [r["phase"] for r in report["epochs"]] == [1, 1, 1, 2, 2, 2]
    assert all(r["test_acc"] is not None for r in report["epochs"])
    t = report["timings"]
    assert t["phase1_train_s"] > 0 and t["phase2_train_s"] > 0 and t["pca_s"] >= 0
    target = report["target"]
    dense_rows = [r for r in read_metrics(dense) if r["event"] == "epoch"]
    assert target["acc"] == pytest.approx(dense_rows[-1]["test_acc"])
    assert target["dense"]["epoch"] <= 3

    # the final parameters lie in θ_ref + span(P), θ_ref = the initial point (start="first")
    basis = load_file(str(out / BASIS))
    p, ref = basis["basis"], basis["reference"]
    assert torch.allclose(p.double() @ p.double().T, torch.eye(3, dtype=torch.float64),
                          atol=1e-5)
    import rankwise

    model = rankwise.load(out)
    theta = flat_params([q for q in model.parameters() if q.requires_grad])
    assert in_span_residual(theta, ref, p) < 1e-4
    assert report["span_residual"] < 1e-4
    torch.manual_seed(0)  # the run's initial point is reproducible from the seed
    init = create_model("smallcnn", num_classes=10, in_channels=1, width=4)
    assert torch.equal(flat_params(list(init.parameters())), ref)

    # phase 2 lowers the loss from the restart point. Measured with batch statistics (train
    # mode, buffers restored): the BN running stats restart from their initial values and lag
    # behind after so few steps, so eval-mode loss is no measure of the coordinates here.
    phase2 = [r for r in report["epochs"] if r["phase"] == 2]
    assert phase2[-1]["train_loss"] < phase2[0]["train_loss"]
    data = load_dataset("synthetic", True, size=512, shape=(1, 28, 28), num_classes=10, seed=0)
    x, y = next(iter(BatchLoader(data.subset(slice(0, 192)), 192, shuffle=False)))

    def batch_loss() -> float:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        model.train()
        with torch.no_grad():
            loss = float(F.cross_entropy(model(x), y))
        model.load_state_dict(state)
        return loss

    final = batch_loss()
    write_flat_(list(model.parameters()), ref)
    assert batch_loss() > final


def test_resume_across_the_switch_matches_an_uninterrupted_run(tmp_path):
    flags = ("--subspace-dim", "2", "--sample-epochs", "2", "--subspace-optimizer", "pbfgs",
             "--subspace-batch-size", "96")
    straight = train(tmp_path / "a", 4, *flags)
    train(tmp_path / "b", 3, *flags)  # stops one epoch after the switch
    resumed = train(tmp_path / "b", 4, *flags, "--resume")
    assert resumed["step"] == straight["step"] == 2 * 6 + 2 * 2  # phase-2 batch 96: 2 steps
    assert resumed["test_loss"] == pytest.approx(straight["test_loss"], rel=1e-6)
    a = json.loads((tmp_path / "a" / REPORT).read_text())
    b = json.loads((tmp_path / "b" / REPORT).read_text())
    assert b["line_search"] == a["line_search"] and b["line_search"]["step"] == 4
    assert [r["test_acc"] for r in b["epochs"]] == [r["test_acc"] for r in a["epochs"]]


def test_subspace_object_in_a_plain_loop():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    sub = SubspaceTraining(model, dim=2, sample_epochs=3, momentum=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sub.sample()
    for _ in range(3):  # phase 1: plain SGD, one sample per "epoch"
        for i in range(0, 64, 16):
            opt.zero_grad()
            F.cross_entropy(model(x[i:i + 16]), y[i:i + 16]).backward()
            opt.step()
        sub.sample()
    sub.switch()
    assert torch.equal(flat_params(sub.params), sub.reference)  # start="first": the init
    opt = sub.make_optimizer()
    assert isinstance(opt, ProjectedSGD)
    for i in range(0, 64, 16):
        opt.zero_grad()
        F.cross_entropy(model(x[i:i + 16]), y[i:i + 16]).backward()
        opt.step()
    assert sub.span_residual() < 1e-5
    state = sub.state_dict()
    other = SubspaceTraining(model, sub.cfg)
    other.load_state_dict(state)
    assert other.phase == "subspace" and torch.equal(other.basis, sub.basis)
