"""cifar10 suite on a fresh clone: committed result files decide what is left to run, and a
row is timed against the dense architecture when the dense run is not on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rankwise.bench.cifar10 import open_rows, suite_rows
from rankwise.bench.cifar10_collect import collect, dense_reference
from rankwise.errors import ConfigError
from rankwise.models import create_model
from tests.bench.test_cifar10 import _fake_runs


def _results(root: Path, names: list[str]) -> Path:
    out = root / "results" / "cifar10"
    out.mkdir(parents=True)
    for name in names:
        (out / f"{name}.json").write_text("{}")
    return out


def test_open_rows_skip_collected_rows_unless_an_open_row_reads_their_runs(
        tmp_path: Path) -> None:
    rows = suite_rows(("r20",), "cpu60")
    names = [r.name for r in rows]
    assert [r.name for r in open_rows(rows, tmp_path / "none")] == names
    matched = "r20-decomp-nc-ft-at-trpnu-nc-cpu60"
    results = _results(tmp_path, [n for n in names if n != matched])
    # the matched decomposition reads the dense run and waits for the TRP+Nu NC run's MACs
    assert [r.name for r in open_rows(rows, results)] == [
        "r20-dense-cpu60", "r20-trpnu-nc-cpu60", matched]
    (results / f"{matched}.json").write_text("{}")
    assert open_rows(rows, results) == []


def test_cli_pending_lists_only_what_the_missing_results_need(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rankwise.cli import main

    rows = suite_rows(("r20",), "cpu60")
    _results(tmp_path, [r.name for r in rows if r.name != "r20-sfw-nuc-cpu60"])
    args = ["bench", "cifar10", "--action", "pending", "--models", "r20", "--schedule", "cpu60",
            "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
    assert main(args) == 0
    outs = [line.split("--out ")[1].split()[0] for line in capsys.readouterr().out.splitlines()]
    assert outs == [str(tmp_path / "runs" / n) for n in
                    ("r20-sfw-nuc-cpu60", "r20-sfw-nuc-cpu60-sweep")]
    assert main([*args, "--no-resume"]) == 0  # every unfinished step, results or not
    assert len(capsys.readouterr().out.splitlines()) > 20


def test_dense_reference_is_the_run_or_else_its_architecture(tmp_path: Path) -> None:
    config = {"model": {"name": "resnet20", "kwargs": {"width": 4}}}
    model, source = dense_reference(None, config)
    expected = create_model("resnet20", width=4)
    assert source == "dense architecture"
    assert [p.shape for p in model.parameters()] == [p.shape for p in expected.parameters()]
    with pytest.raises(ConfigError, match="names no model"):
        dense_reference(None, {})
    rows = _fake_runs(tmp_path)
    assert dense_reference(tmp_path / "r20-dense", {})[1] == "dense run"
    dense_config = tmp_path / "r20-dense" / "config.json"
    dense_config.write_text(json.dumps({**json.loads(dense_config.read_text()),
                                        "model": config["model"]}))
    sweep_row = [r for r in rows if r.name == "r20-dense-sweep"]  # its dense row is not given
    [path] = collect(tmp_path, tmp_path / "results", rows=sweep_row)
    metrics = json.loads(path.read_text())["metrics"]
    assert metrics["latency_dense"] == "dense architecture"
    assert metrics["latency_ms"] > 0 and metrics["dense_latency_ms"] > 0
