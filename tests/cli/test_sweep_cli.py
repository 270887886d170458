"""`rankwise sweep RUN [RUN2 ...]` end to end on two tiny synthetic runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rankwise.cli import main

torch.set_num_threads(1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICK = ["--model", "smallcnn", "--width", "4", "--dataset", "synthetic", "--synthetic-size",
         "96", "--limit-test", "48", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
         "--quiet", "--num-threads", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    dense, sfw = root / "dense", root / "sfw"
    assert main(["train", *QUICK, "--lr", "0.05", "--out", str(dense)]) == 0
    assert main(["train", *QUICK, "--lr", "0.5", "--wd", "0", "--out", str(sfw), "--method",
                 "sfw", "--sfw-sweep", "none", "--sfw-width", "2"]) == 0
    return dense, sfw


def _eval_acc(path: Path, capsys) -> float:
    capsys.readouterr()
    assert main(["eval", str(path), "--json", "--device", "cpu", "--limit", "48"]) == 0
    return json.loads(capsys.readouterr().out)["acc"]


def test_lowrank_sweep_compares_two_runs(runs, tmp_path, capsys):
    dense, sfw = runs
    acc = {"dense": _eval_acc(dense, capsys), "sfw": _eval_acc(sfw, capsys)}
    out = tmp_path / "cmp"
    capsys.readouterr()
    rc = main(["sweep", str(dense), str(sfw), "--kind", "lowrank", "--ratios", "0,0.5,0.8",
               "--limit-test", "48", "--device", "cpu", "--out", str(out), "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["runs"]) == {"dense", "sfw"}
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["kind"] == "lowrank" and doc["meta"]["runs"]["sfw"]["method"] == "sfw"
    for label, rows in doc["runs"].items():
        assert [r["ratio"] for r in rows] == [0.0, 0.5, 0.8]
        assert rows[0]["acc"] == pytest.approx(acc[label])  # `rankwise eval` of the same run
        assert rows[0]["stability"] in (None, 1.0)
        assert rows[2]["params"] < rows[1]["params"] < rows[0]["params"]
    md = (out / "sweep.md").read_text()
    assert "| ratio | dense acc % | sfw acc % |" in md
    assert (out / "sweep.png").read_bytes()[:8] == PNG_MAGIC


def test_filters_sweep_default_out_and_table(runs, capsys):
    dense, _ = runs
    capsys.readouterr()
    assert main(["sweep", str(dense), "--kind", "filters", "--ratios", "0,0.5",
                 "--limit-test", "48", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "ratio" in text and "dense" in text
    doc = json.loads((dense / "sweep-filters" / "sweep.json").read_text())
    (rows,) = doc["runs"].values()
    assert rows[0]["pruned_filters"] == 0
    # smallcnn width 4: convs of 4 and 8 filters, half of each pruned
    assert rows[1]["pruned_filters"] == 2 + 4
    assert (dense / "sweep-filters" / "sweep.png").read_bytes()[:8] == PNG_MAGIC


def test_bad_ratio_is_a_clean_error(runs, capsys):
    dense, _ = runs
    assert main(["sweep", str(dense), "--ratios", "0,1.0", "--device", "cpu"]) == 2
    assert "[0, 1)" in capsys.readouterr().err
