"""End-to-end `rankwise train` / `rankwise eval` on the synthetic dataset through cli.main."""

import argparse
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from rankwise.cli import main
from rankwise.methods import METHODS, Method
from rankwise.train import Hook, read_metrics

REPO = Path(__file__).resolve().parents[2]
QUICK = ["--model", "mlp", "--dataset", "synthetic", "--limit-train", "192", "--limit-test",
         "96", "--batch-size", "32", "--lr", "0.05", "--schedule", "cosine", "--device", "cpu",
         "--quiet", "--num-threads", "1"]


def train(out: Path, *extra: str, epochs: int = 2) -> int:
    return main(["train", *QUICK, "--epochs", str(epochs), "--out", str(out), *extra])


def eval_json(path: Path, capsys, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["eval", str(path), "--json", "--device", "cpu", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_train_writes_run_and_eval_reproduces_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, epochs=3) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["epoch"] == 3 and printed["model"] == "mlp"
    assert printed["test_acc"] > 0.3  # 10 classes: chance is 0.1
    for name in ("config.json", "checkpoint.pt", "metrics.jsonl", "model.safetensors",
                 "model.json", "summary.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == {"name": "mlp", "kwargs": {"num_classes": 10, "in_channels": 1}}
    assert config["dataset"]["name"] == "synthetic" and config["method"] == "dense"
    assert config["train"]["epochs"] == 3 and config["train"]["schedule"] == "cosine"
    assert len([r for r in read_metrics(out) if r["event"] == "epoch"]) == 3

    result = eval_json(out, capsys, "--limit", "96")
    assert result["samples"] == 96
    assert result["acc"] == pytest.approx(printed["test_acc"])
    assert result["loss"] == pytest.approx(printed["test_loss"], rel=1e-6)

    import rankwise

    model = rankwise.load(out)  # rebuilt from model.json: no run config needed
    assert sum(p.numel() for p in model.parameters()) == printed["params"]


def test_eval_prints_a_table(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "--limit-test", "32", epochs=1) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--device", "cpu", "--limit", "32"]) == 0
    text = capsys.readouterr().out
    assert "synthetic" in text and "loss" in text and "%" in text


def test_resume_continues_counting_and_interrupted_run_evaluates(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, epochs=1) == 0
    assert train(out, "--resume", epochs=2) == 0
    rows = [r for r in read_metrics(out) if r["event"] == "epoch"]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["step"] == 2 * rows[0]["step"] == 12
    final = eval_json(out, capsys, "--limit", "96")
    # an interrupted run (no model.json yet) is rebuilt from config.json + checkpoint.pt
    (out / "model.json").unlink()
    (out / "model.safetensors").unlink()
    assert eval_json(out, capsys, "--limit", "96") == final


def test_eval_of_a_plain_saved_model(tmp_path, capsys):
    import rankwise
    from rankwise.models import create_model

    model = create_model("mlp", num_classes=10, in_channels=1)
    rankwise.save(model, tmp_path / "saved", arch="mlp",
                  arch_kwargs={"num_classes": 10, "in_channels": 1}, input_shape=(1, 28, 28))
    result = eval_json(tmp_path / "saved", capsys, "--dataset", "synthetic", "--limit", "40")
    assert result["samples"] == 40 and result["params"] == 235146
    assert 0.0 <= result["acc"] <= 1.0 and result["loss"] > 0


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert train(tmp_path / "fresh", "--resume", epochs=1) == 2
    assert "checkpoint.pt not found" in capsys.readouterr().err
    assert train(tmp_path / "x", "--warmup", "-1", epochs=1) == 2
    assert "warmup" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing"), "--device", "cpu"]) == 2
    assert "neither" in capsys.readouterr().err
    assert main(["train", *QUICK, "--epochs", "1", "--out", str(tmp_path / "y"),
                 "--milestones", "8O"]) == 2
    assert "--milestones" in capsys.readouterr().err


@dataclass
class FakeConfig:
    scale: float = 1.0


class CountSteps(Hook):
    def __init__(self):
        self.steps = 0

    def after_step(self, trainer, step):
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


class FakeMethod(Method):
    name = "fake"
    config_class = FakeConfig

    def __init__(self):
        self.calls = []
        self.hook = CountSteps()

    def add_arguments(self, parser):
        parser.add_argument("--fake-scale", type=float, default=1.0)

    def config_from_args(self, args: argparse.Namespace):
        return FakeConfig(scale=args.fake_scale)

    def prepare_model(self, model, cfg, input_shape):
        self.calls.append(("prepare", cfg.scale, tuple(input_shape)))
        return model

    def hooks(self, cfg):
        return [self.hook]

    def make_optimizer(self, model, train_cfg, cfg):
        self.calls.append(("optimizer", train_cfg.lr))
        return torch.optim.SGD(model.parameters(), lr=train_cfg.lr * cfg.scale)

    def finalize(self, trainer, cfg):
        self.calls.append(("finalize", trainer.epoch))
        return {"hook_steps": self.hook.steps}


def test_method_plumbing(tmp_path, capsys, monkeypatch):
    fake = FakeMethod()
    monkeypatch.setitem(METHODS, "fake", fake)
    out = tmp_path / "run"
    assert train(out, "--method", "fake", "--fake-scale", "0.5", epochs=1) == 0
    assert fake.calls == [("prepare", 0.5, (1, 28, 28)), ("optimizer", 0.05), ("finalize", 1)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "fake" and summary["method_report"] == {"hook_steps": 6}
    config = json.loads((out / "config.json").read_text())
    assert config["method_config"] == {"scale": 0.5}
    assert config["train"]["lr"] == 0.05


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RANKWISE_TEST_TORCHRUN") != "1",
                    reason="~20 s on 2 cores (3 processes import torch); set "
                           "RANKWISE_TEST_TORCHRUN=1. tests/train/test_ddp.py covers DDP itself")
def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={_free_port()}", "-m", "rankwise", "train", *QUICK, "--epochs", "1",
           "--batch-size", "64", "--out", str(out)]
    # own session, so a hang can be ended for the launcher and both ranks at once
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    rows = [r for r in read_metrics(out) if r["event"] == "epoch"]
    assert len(rows) == 1 and rows[0]["step"] == 3  # 192 samples / global batch 64
    summaries = [line for line in stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # only rank 0 prints
