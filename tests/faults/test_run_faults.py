"""Fault injection on `rankwise train` / `rankwise bench` runs: kills, concurrent writers,
damaged checkpoints, stale benchmark cells and stale temporary files."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rankwise.cli import main
from rankwise.train import read_metrics

REPO = Path(__file__).resolve().parents[2]
QUICK = ["--model", "mlp", "--dataset", "synthetic", "--synthetic-size", "96", "--batch-size",
         "32", "--lr", "0.05", "--schedule", "cosine", "--device", "cpu", "--quiet",
         "--num-threads", "1"]


def train_argv(out: Path, epochs: int, *extra: str) -> list[str]:
    return ["train", *QUICK, "--epochs", str(epochs), "--out", str(out), *extra]


def run_script(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def epoch_rows(out: Path) -> list[int]:
    return [r["epoch"] for r in read_metrics(out) if r["event"] == "epoch"]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


@pytest.mark.slow
def test_kill_between_metrics_and_checkpoint_then_resume(tmp_path):
    """SIGKILL right after epoch 2's metrics line is written: resume gives one row per epoch and
    the weights of an uninterrupted run."""
    killed = tmp_path / "killed"
    argv = train_argv(killed, 3)
    proc = run_script(f"""
        import os, signal
        from rankwise.train import logger
        original = logger.RunLogger.log
        def log(self, row, step):
            original(self, row, step)
            if row.get("event") == "epoch" and row.get("epoch") == 2:
                os.kill(os.getpid(), signal.SIGKILL)   # the metrics line is on disk
        logger.RunLogger.log = log
        from rankwise.cli import main
        main({argv!r})
    """)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert main([*argv, "--resume"]) == 0
    assert epoch_rows(killed) == [1, 2, 3]
    straight = tmp_path / "straight"
    assert main(train_argv(straight, 3)) == 0
    a, b = weights(straight), weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [r for r in read_metrics(killed) if r["event"] == "epoch"]
    assert [r["step"] for r in rows] == [r["step"] for r in read_metrics(straight)
                                         if r["event"] == "epoch"]


def test_second_writer_into_a_locked_run_dir_is_refused(tmp_path, capsys, monkeypatch):
    """A run blocked mid-training holds `--out`; a second `rankwise train` there must fail."""
    from rankwise.train import trainer

    out = tmp_path / "run"
    started, go = threading.Event(), threading.Event()
    original = trainer.Trainer._train_epoch

    def blocked_epoch(self, progress):
        started.set()
        assert go.wait(60)
        return original(self, progress)

    monkeypatch.setattr(trainer.Trainer, "_train_epoch", blocked_epoch)
    codes = []
    first = threading.Thread(target=lambda: codes.append(main(train_argv(out, 1))))
    first.start()
    try:
        assert started.wait(60)
        assert main(train_argv(out, 1, "--resume")) == 2
        assert main(train_argv(out, 1)) == 2
        assert main(train_argv(out, 1, "--overwrite")) == 2
        assert capsys.readouterr().err.count("another run") == 3
    finally:
        go.set()
        first.join(60)
    assert codes == [0]
    assert epoch_rows(out) == [1]


def test_tampered_checkpoint_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv(out, 1)) == 0
    path = out / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    name, w = next((k, v) for k, v in state["model"].items() if v.numel() >= 64)
    data = bytearray(path.read_bytes())
    at = data.find(w.numpy().tobytes())
    assert at > 0
    data[at + 17] ^= 0x40  # one flipped bit inside the tensor's bytes
    path.write_bytes(bytes(data))
    before = (out / "config.json").read_bytes(), (out / "metrics.jsonl").read_bytes()
    assert main(train_argv(out, 2, "--resume")) == 2
    assert "integrity" in capsys.readouterr().err
    assert ((out / "config.json").read_bytes(), (out / "metrics.jsonl").read_bytes()) == before


def test_stale_temporaries_are_cleaned_on_start(tmp_path):
    out = tmp_path / "run"
    assert main(train_argv(out, 1)) == 0
    stale = [out / "checkpoint.pt.k1ll3d.tmp", out / "metrics.jsonl.x9.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    assert main(train_argv(out, 2, "--resume")) == 0
    assert not any(p.exists() for p in stale)
    assert epoch_rows(out) == [1, 2]


@pytest.mark.slow
def test_stale_bench_cells_are_not_reused(tmp_path, monkeypatch, capsys):
    """`bench --epochs 1` then `--epochs 2` into one --out: the cells are rerun and the table
    states 2 epochs."""
    import rankwise.bench.quick as quick

    tiny = dataclasses.replace(quick.QUICK, dataset="synthetic", methods=("dense",),
                               models=(quick.SuiteModel("mlp", "mlp"),), limit_train=64,
                               limit_test=32, batch_size=32, levels=(0.5,), threads=1)
    monkeypatch.setitem(quick.SUITES, "quick", tiny)
    out = tmp_path / "bench"
    base = ["bench", "quick", "--out", str(out), "--quiet"]
    assert main([*base, "--epochs", "1"]) == 0
    assert main([*base, "--epochs", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["result"]["epochs"] for r in results] == [2]
    table = (out / "table.md").read_text()
    assert "2 epochs" in table and "1 epochs" not in table
    summaries = [json.loads(p.read_text()) for p in out.rglob("summary.json")]
    assert sorted(s["epoch"] for s in summaries) == [1, 2]  # a new run, the old one untouched
    saved = tmp_path / "results" / "quick"  # finished cells are reused, then saved
    assert main([*base, "--epochs", "2", "--save-results", str(saved)]) == 0
    assert len(list(saved.glob("*.json"))) == 1
    report = tmp_path / "BENCHMARKS.md"
    assert main(["bench", "report", "--results", str(tmp_path / "results"), "--out",
                 str(report)]) == 0
    assert "2 epochs" in report.read_text()


@pytest.mark.parametrize("argv, needle", [
    (["--epochs", "0"], "epochs"),
    (["--seeds", "a"], "--seeds"),
])
def test_bench_refuses_silent_no_ops(tmp_path, capsys, argv, needle):
    code = main(["bench", "quick", "--out", str(tmp_path / "b"), "--quiet", *argv])
    assert code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_missing_data_stops_the_suite_before_its_first_cell(tmp_path, capsys):
    out = tmp_path / "b"
    code = main(["bench", "quick", "--out", str(out), "--quiet", "--offline", "--data-dir",
                 str(tmp_path / "no-data")])
    err = capsys.readouterr().err
    assert code == 2 and "not found" in err and err.count("\n") <= 2
    assert not out.exists()  # no cell ran, no table that looks complete
