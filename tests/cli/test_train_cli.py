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
from rankwise.train import Hook, read_metrics
from rankwise.train.recipes import RECIPES as METHODS
from rankwise.train.recipes import Recipe as Method

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
    threads = json.loads((out / "summary.json").read_text())["threads"]
    assert 1 <= threads <= len(os.sched_getaffinity(0))  # chosen from the free cores

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


def test_train_without_quiet_prints_the_final_metrics_table(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [a for a in QUICK if a != "--quiet"]
    assert main(["train", *argv, "--epochs", "1", "--out", str(out), "--method", "trp",
                 "--trp-energy", "0.9", "--trp-include-linear"]) == 0
    text = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert "final metrics" in text and "test_acc" in text
    assert f"{summary['test_acc']:.4f}" in text  # the run's own number, as the table shows it
    assert "trp." in text  # the method's report rows
    assert not text.lstrip().startswith("{")  # a table, not the --quiet JSON line


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
    config_cls = FakeConfig

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


# ----- run-directory rules, resume validation, divergence, refused no-ops (issue 13) --------


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_non_empty_out_is_refused_and_overwrite_swaps_only_on_success(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, epochs=1) == 0
    before = _files(out)
    assert train(out, epochs=1) == 2
    assert "--resume" in capsys.readouterr().err and _files(out) == before
    assert train(out, "--overwrite", "--lr", "1e6", epochs=1) == 2  # diverges: old run kept
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["run"]
    assert train(out, "--overwrite", "--seed", "3", epochs=2) == 0
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == 3
    assert [r["epoch"] for r in read_metrics(out) if r["event"] == "epoch"] == [1, 2]
    assert train(out, "--resume", "--overwrite", epochs=2) == 2


def test_leftovers_of_a_run_killed_before_its_first_checkpoint_are_cleared(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"event": "step", "step": 50, "loss": 2.3}\n')
    assert train(out, epochs=1) == 0
    assert [r["event"] for r in read_metrics(out)] == ["epoch"]


def test_resume_with_other_settings_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, epochs=1) == 0
    before = _files(out)
    assert train(out, "--resume", "--batch-size", "64", epochs=2) == 2
    err = capsys.readouterr().err
    assert "batch_size" in err and "32" in err and "64" in err
    assert train(out, "--resume", "--method", "trp", epochs=2) == 2
    assert _files(out) == before
    assert train(out, "--resume", "--quiet", epochs=2) == 0  # bookkeeping may change


def test_diverged_run_exits_non_zero_and_json_stays_valid(tmp_path, capsys):
    out = tmp_path / "run"  # BatchNorm keeps the train loss finite; the test loss is NaN
    assert train(out, "--model", "resnet20", "--width", "4", "--limit-train", "64",
                 "--limit-test", "32", "--lr", "1e6", epochs=1) != 0
    assert "diverged" in capsys.readouterr().err
    def no_nan(token):
        raise AssertionError(f"invalid JSON token {token}")

    for p in out.iterdir():
        if p.suffix in (".json", ".jsonl"):
            for line in p.read_text().splitlines() if p.suffix == ".jsonl" else [p.read_text()]:
                json.loads(line, parse_constant=no_nan)
    assert not (out / "summary.json").exists()


def test_flags_of_another_method_are_refused(tmp_path, capsys):
    assert train(tmp_path / "r", "--trp-energy", "0.8", epochs=1) == 2
    err = capsys.readouterr().err
    assert "--trp-energy" in err and "--method trp" in err
    assert train(tmp_path / "r", "--method", "trp", "--sfw-k", "0.2", epochs=1) == 2
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_clean_error(tmp_path, capsys):
    assert train(tmp_path / "r", "--device", "cuda", epochs=1) == 2
    err = capsys.readouterr().err
    assert "cuda" in err.lower() and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_every_existing_flag_still_parses():
    from rankwise.cli import build_parser
    from rankwise.cli.train import run_config_from_args

    argv = ("train --model resnet20 --dataset cifar10 --epochs 40 --schedule cosine --lr 0.1 "
            "--wd 1e-4 --batch-size 128 --precision bf16 --channels-last --num-threads 1 "
            "--quiet --eval-every 1 --method trp --trp-scheme channel --trp-energy 0.9 "
            "--trp-period 1 --nuclear-weight 3e-4 --out DIR --resume").split()
    rc = run_config_from_args(build_parser().parse_args(argv))
    t = rc.train
    assert (t.epochs, t.schedule, t.lr, t.weight_decay, t.batch_size, t.precision,
            t.channels_last, t.num_threads, t.quiet, t.milestones) == (
        40, "cosine", 0.1, 1e-4, 128, "bf16", True, 1, True, [82, 122])
    assert rc.method == "trp" and rc.resume and str(rc.out) == "DIR"
    assert rc.method_config.nuclear_weight == 3e-4 and rc.method_config.energy == 0.9
    old = ("train --model mlp --dataset synthetic --out D --width 2 --data-dir x --download "
           "--synthetic-size 64 --limit-train 5 --limit-test 5 --momentum 0.8 --nesterov "
           "--no-wd-on-bn-bias --milestones 3,5 --gamma 0.2 --warmup 1 --label-smoothing 0.1 "
           "--no-augment --seed 4 --device cpu --compile --log-every 7 --tensorboard").split()
    rc = run_config_from_args(build_parser().parse_args(old))
    assert (rc.train.milestones, rc.train.warmup_epochs, rc.train.augment, rc.data.download,
            rc.model.width, rc.train.wd_on_bn_bias) == ([3, 5], 1.0, False, True, 2, False)


def test_python_run_is_what_the_cli_runs(tmp_path):
    import rankwise
    from rankwise.train.config import DataConfig, ModelConfig, TrainConfig

    assert train(tmp_path / "cli", epochs=2) == 0
    summary = rankwise.run(rankwise.RunConfig(
        ModelConfig("mlp"), DataConfig("synthetic", limit_train=192, limit_test=96),
        TrainConfig(epochs=2, batch_size=32, lr=0.05, schedule="cosine", milestones=[82, 122],
                    quiet=True, num_threads=1), out=tmp_path / "api"))
    cli = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["test_loss"] == cli["test_loss"] and summary["params"] == cli["params"]
