"""cifar10 suite: rows as data, commands, collect from finished run dirs, the section."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from rankwise.bench.cifar10 import (
    BenchRow,
    Step,
    commands,
    pending_commands,
    schedule_args,
    schedule_of,
    suite_rows,
)
from rankwise.bench.cifar10_collect import collect, reference_flops
from rankwise.bench.cifar10_report import claims, section
from rankwise.bench.papers import paper_row
from rankwise.io.model_file import save
from rankwise.layers import FORMATS
from rankwise.models import create_model


def test_rows_are_unique_and_cover_the_issue() -> None:
    rows = suite_rows()
    names = [r.name for r in rows]
    assert len(names) == len(set(names))
    kinds = {(r.model, r.method, r.scheme) for r in rows}
    for model in ("resnet20", "resnet56"):
        assert (model, "dense", None) in kinds
        for scheme in ("channel", "spatial"):
            assert {(model, "trp", scheme), (model, "trp+nu", scheme),
                    (model, "decompose+ft", scheme)} <= kinds
        assert (model, "elrt", "tucker2") in kinds and (model, "pipeline", None) in kinds
        assert sum(1 for r in rows if r.model == model and r.method == "sfw") == 2
    assert len(suite_rows(("r20",), seeds=(0, 1))) == 2 * len(suite_rows(("r20",)))


def test_commands_match_the_queued_runs_and_order_dependencies() -> None:
    cmds = dict(commands(suite_rows(("r20",), schedule="cpu40")))
    dense = cmds["r20-dense"]
    for flag in ("--model resnet20", "--dataset cifar10", "--epochs 40", "--schedule cosine",
                 "--lr 0.1", "--wd 1e-4", "--batch-size 128", "--precision auto",
                 "--channels-last", "--num-threads 1", "--out runs/cifar10/r20-dense"):
        assert flag in dense
    trpnu = cmds["r20-trpnu-nc"]
    for flag in ("--method trp", "--trp-scheme channel", "--trp-energy 0.9",
                 "--trp-period 1", "--nuclear-weight 3e-4"):
        assert flag in trpnu
    assert "--nuclear-weight 0" in cmds["r20-trp-vh"] and "spatial" in cmds["r20-trp-vh"]
    sfw = cmds["r20-sfw-ksup"]
    assert sfw.count("--lr ") == 1 and sfw.count("--wd ") == 1 and "--wd 0" in sfw
    order = list(cmds)
    assert order.index("r20-dense") < order.index("r20-decomp-nc-ft")
    assert order.index("r20-trpnu-nc") < order.index("r20-pipeline")
    assert order.index("r20-sfw-ksup") < order.index("r20-sfw-ksup-sweep")
    assert "sweep runs/cifar10/r20-sfw-ksup " in cmds["r20-sfw-ksup-sweep"]
    assert "--checkpoint runs/cifar10/r20-dense " in cmds["r20-decomp-nc-ft"]
    assert "r20-trpnu-nc-e97-m10/factorized" in cmds["r20-pipeline"]
    assert "--trp-energy 0.97 --trp-period 10 " in cmds["r20-trpnu-nc-e97-m10"]
    tuned = cmds["r20-trpnu-nc-ft"]
    for flag in ("--init runs/cifar10/r20-dense ", "--epochs 10 ", "--lr 0.01 ", "--wd 1e-4 ",
                 "--trp-energy 0.9 --trp-period 1 "):
        assert flag in tuned
    assert "budget:macs={macs:r20-trpnu-nc-ft}" in cmds["r20-decomp-nc-ft-at-trpnu-nc-ft"]
    assert schedule_args("paper")[:6] == ("--epochs", "164", "--schedule", "step",
                                          "--milestones", "82,122")


def test_default_schedule_tags_every_run_and_its_dependencies() -> None:
    rows = suite_rows(("r20",))
    assert {schedule_of(r) for r in rows} == {"cpu60"}
    assert all("-cpu60" in r.name for r in rows)
    cmds = dict(commands(rows))
    assert "--epochs 60" in cmds["r20-dense-cpu60"] and "--wd 5e-4" in cmds["r20-dense-cpu60"]
    decomp = cmds["r20-decomp-nc-ft-cpu60"]
    assert "--checkpoint runs/cifar10/r20-dense-cpu60 " in decomp and "--precision auto" in decomp
    assert "sweep runs/cifar10/r20-dense-cpu60 " in cmds["r20-dense-cpu60-sweep"]
    assert {schedule_of(r) for r in suite_rows(("r20",), schedule="cpu40")} == {"cpu40"}
    assert not set(r.name for r in rows) & set(r.name for r in suite_rows(("r20",), "cpu40"))


def test_pending_commands_skip_finished_steps(tmp_path: Path) -> None:
    rows = suite_rows(("r20",), schedule="cpu40")
    (tmp_path / "r20-dense").mkdir()
    (tmp_path / "r20-dense" / "summary.json").write_text("{}")
    pending = [n for n, _ in pending_commands(tmp_path, rows)]
    assert "r20-dense" not in pending and "r20-trpnu-nc" in pending
    assert all(str(tmp_path) in c for _, c in pending_commands(tmp_path, rows))
    (tmp_path / "r20-trpnu-nc").mkdir()
    (tmp_path / "r20-trpnu-nc" / "checkpoint.pt").write_bytes(b"x")
    cmds = dict(pending_commands(tmp_path, rows))
    assert cmds["r20-trpnu-nc"].endswith(" --resume") and "--resume" not in cmds["r20-trp-vh"]


def test_reference_flops_by_hand() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    net = nn.Sequential(conv, nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    assert reference_flops(net, (3, 8, 8)) == 8 * 3 * 9 * 64  # the FC is excluded
    r = 2
    fact = nn.Sequential(FORMATS["channel"].from_dense(conv, r), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 10))
    # NC per output pixel: c·kh·kw·r + r·n
    assert reference_flops(fact, (3, 8, 8)) == (3 * 9 * r + r * 8) * 64
    strided = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1))
    assert reference_flops(strided, (3, 8, 8)) == 4 * 3 * 9 * 16


def test_paper_rows_match_by_model_method_and_scheme() -> None:
    assert paper_row("resnet20", "trp+nu", "channel").acc == pytest.approx(90.50)
    assert paper_row("resnet20", "trp+nu", "spatial").drop == pytest.approx(91.74 - 90.62)
    assert paper_row("resnet20", "trp", "channel") is None
    assert paper_row("resnet56", "trp+nu", "spatial").comparable is False


def _fake_runs(root: Path) -> list[BenchRow]:
    """A finished dense run (tiny ResNet-20 on synthetic data), its sweep, a pipeline report,
    and an unfinished TRP row."""
    torch.manual_seed(0)
    model = create_model("resnet20", width=4)
    dense = root / "r20-dense"
    save(model, dense, arch="resnet20", arch_kwargs={"width": 4}, input_shape=(3, 32, 32))
    config = {"dataset": {"name": "synthetic", "limit_test": 16, "kwargs": {
        "size": 16, "shape": [3, 32, 32], "num_classes": 10, "seed": 0}},
        "input_shape": [3, 32, 32], "train": {"epochs": 40, "schedule": "cosine", "lr": 0.1}}
    (dense / "config.json").write_text(json.dumps(config))
    (dense / "summary.json").write_text(json.dumps({"test_acc": 0.1}))
    sweep = root / "r20-dense-sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"kind": "lowrank", "runs": {"r20-dense": [
        {"ratio": 0.0, "acc": 0.5, "params": 100, "macs": 1000},
        {"ratio": 0.5, "acc": 0.25, "params": 60, "macs": 500}]}}))
    pipe = root / "r20-pipeline"
    pipe.mkdir()
    (pipe / "report.json").write_text(json.dumps({"stages": [
        {"stage": "input", "acc": 0.5, "params": 100, "macs": 1000, "bytes_fp32": 400},
        {"stage": "entropy", "acc": 0.4, "params": 100, "macs": 1000, "bytes_fp32": 400,
         "bytes_int8": 100, "bytes_coded": 42}]}))
    return [
        BenchRow("r20-dense", "resnet20", "dense", None, "dense (SGD)", "model",
                 (Step(("train", "--out", "{runs}/r20-dense"), "r20-dense", "summary.json"),)),
        BenchRow("r20-trpnu-nc", "resnet20", "trp+nu", "channel", "TRP+Nu NC", "trp",
                 (Step(("train", "--method", "trp"), "r20-trpnu-nc", "summary.json"),)),
        BenchRow("r20-dense-sweep", "resnet20", "sgd-sweep", "channel", "SGD, truncated",
                 "sweep", (Step(("sweep",), "r20-dense-sweep", "sweep.json"),),
                 needs=("r20-dense",)),
        BenchRow("r20-pipeline", "resnet20", "pipeline", None, "pipeline", "compress",
                 (Step(("compress",), "r20-pipeline", "report.json"),), needs=("r20-trpnu-nc",)),
    ]


def test_collect_writes_finished_rows_and_section_lists_pending(tmp_path: Path) -> None:
    runs, results = tmp_path / "runs", tmp_path / "results"
    rows = _fake_runs(runs)
    written = collect(runs, results / "cifar10", rows=rows, latency=False)
    assert sorted(p.name for p in written) == ["r20-dense-sweep.json", "r20-dense.json",
                                               "r20-pipeline.json"]
    rec = json.loads((results / "cifar10" / "r20-dense.json").read_text())
    for key in ("command", "commit", "machine", "date", "seed", "metrics", "schedule"):
        assert key in rec
    assert rec["command_source"] == "suite definition"
    m = rec["metrics"]
    model = create_model("resnet20", width=4)
    assert m["params"] == sum(p.numel() for p in model.parameters())
    assert m["flops_reference"] == reference_flops(model, (3, 32, 32))
    assert m["macs"] > m["flops_reference"] / 1024  # per sample, FC included (not per pixel)
    assert 0.0 <= m["acc"] <= 100.0
    sweep = json.loads((results / "cifar10" / "r20-dense-sweep.json").read_text())
    assert [s["acc"] for s in sweep["metrics"]["sweep"]] == [50.0, 25.0]
    pipe = json.loads((results / "cifar10" / "r20-pipeline.json").read_text())
    assert pipe["metrics"]["bytes"] == 42 and pipe["metrics"]["acc"] == pytest.approx(40.0)
    # unchanged sources are not rewritten; a touched marker is
    assert collect(runs, results / "cifar10", rows=rows, latency=False) == []
    marker = runs / "r20-pipeline" / "report.json"
    os.utime(marker, (marker.stat().st_atime, marker.stat().st_mtime + 10))
    assert [p.name for p in collect(runs, results / "cifar10", rows=rows, latency=False)] == [
        "r20-pipeline.json"]
    # a file collected under an older definition of the metrics is collected again
    old = results / "cifar10" / "r20-dense.json"
    old.write_text(json.dumps({**json.loads(old.read_text()), "metrics_version": 1}))
    assert [p.name for p in collect(runs, results / "cifar10", rows=rows, latency=False)] == [
        "r20-dense.json"]

    md = section(results, rows=rows)
    pending = next(line for line in md.splitlines() if line.startswith("| TRP+Nu NC"))
    assert "**pending**" in pending and "`r20-trpnu-nc`" in pending
    cells = [c.strip() for c in pending.split("|")]
    assert cells[2] == "**pending**" and cells[3] == ""  # no numbers of ours
    assert cells[4] == "90.50" and cells[5] == "-1.24"  # the paper's, beside it
    dense_line = next(line for line in md.splitlines() if line.startswith("| dense (SGD)"))
    assert "91.74" in dense_line and f"{m['acc']:.2f}" in dense_line
    assert "| 0.5 | 25.00 |" in md  # the sweep table
    assert "0.0" in md and "40 ep cosine" in md


def test_claims_are_read_off_the_results() -> None:
    rows = suite_rows(("r20",), schedule="cpu40")
    by = {r.method + (r.scheme or ""): r.name for r in rows if "at_macs_of" not in r.notes}
    sweep = [{"ratio": 0.0, "acc": 90.0}, {"ratio": 0.5, "acc": 50.0}]
    results = {
        "r20-dense": {"metrics": {"acc": 91.0, "flops_reference": 400}},
        by["decompose+ftchannel"]: {"metrics": {"acc": 89.0, "flops_reference": 184}},
        "r20-trpnu-nc": {"metrics": {"acc": 89.5, "flops_reference": 188}},
        "r20-dense-sweep": {"metrics": {"sweep": sweep}},
        "r20-sfw-ksup": {"metrics": {"sweep": [{"ratio": 0.0, "acc": 88.0},
                                                {"ratio": 0.5, "acc": 87.0}]}},
    }
    text = "\n".join(claims(rows, results))
    assert "within 1 point of the paper's 91.74: holds (91.00, -0.74)" in text
    assert "TRP+Nu NC: ≥ 2× FLOPs with a drop ≤ 1.74: holds (2.13×, −1.50)" in text
    assert "beats decomposition + fine-tuning at the paper's FLOPs (89.00 at 2.17×): yes" in text
    assert "curve above SGD's: holds from 0.5 on (above at 0.5; below at 0)" in text
    results["r20-trpnu-nc"]["metrics"]["acc"] = 88.0
    assert "does not hold (2.13×, −3.00)" in "\n".join(claims(rows, results))
    matched = next(r for r in rows if r.notes.get("at_macs_of") == "r20-trpnu-nc")
    results[matched.name] = {"metrics": {"acc": 87.5, "flops_reference": 188}}
    plain = next(line for line in claims(rows, results) if line.startswith("- TRP+Nu NC:"))
    assert "at the same MACs (87.50 at 2.13×): yes" in plain


def test_trp_row_is_compared_with_a_decomposition_at_its_own_macs() -> None:
    rows = suite_rows(("r20",), schedule="cpu40")
    matched = next(r for r in rows if r.notes.get("at_macs_of") == "r20-trpnu-nc-e97-m10")
    assert matched.needs == ("r20-dense", "r20-trpnu-nc-e97-m10")
    results = {
        "r20-dense": {"metrics": {"acc": 91.0, "flops_reference": 400}},
        "r20-decomp-nc-ft": {"metrics": {"acc": 88.0, "flops_reference": 184}},
        "r20-trpnu-nc-e97-m10": {"metrics": {"acc": 89.5, "flops_reference": 160}},
        "r20-trpnu-nc-e97-m10-rt4": {"metrics": {"acc": 89.9, "flops_reference": 160}},
    }
    text = "\n".join(claims(rows, results))  # no matched result: the paper-FLOPs row
    assert "(ours): ≥ 2× FLOPs with a drop ≤ 1.74: holds (2.50×, −1.50); beats " \
           "decomposition + fine-tuning at the paper's FLOPs (88.00 at 2.17×): yes" in text
    results[matched.name] = {"metrics": {"acc": 89.7, "flops_reference": 160}}
    lines = claims(rows, results)
    ours = next(line for line in lines if "(ours)" in line)
    retrain = next(line for line in lines if "retrain" in line)
    assert "at the same MACs (89.70 at 2.50×): no" in ours
    assert "at the same MACs (89.70 at 2.50×): yes" in retrain
    results["r20-trpnu-nc-ft"] = {"metrics": {"acc": 85.0, "flops_reference": 100}}
    results["r20-decomp-nc-ft-at-trpnu-nc-ft"] = {"metrics": {"acc": 86.0, "flops_reference": 100}}
    tuned = next(line for line in claims(rows, results) if "ImageNet recipe" in line)
    assert "at the same MACs (86.00 at 4.00×): no" in tuned


def test_matched_decomposition_waits_for_its_trp_run(tmp_path: Path) -> None:
    rows = suite_rows(("r20",), schedule="cpu60")
    name = "r20-decomp-nc-ft-at-trpnu-nc-e97-m10-cpu60"
    waiting = dict(pending_commands(tmp_path, rows))[name]
    assert waiting.startswith("# after r20-trpnu-nc-e97-m10-cpu60: rankwise decompose")
    run = tmp_path / "r20-trpnu-nc-e97-m10-cpu60"
    run.mkdir()
    counts = {"macs_before": 4000, "macs_after": 1000}
    (run / "trp_report.json").write_text(json.dumps({"counting": {"rankwise": counts}}))
    ready = dict(pending_commands(tmp_path, rows))[name]
    assert ready.startswith("rankwise decompose --checkpoint " + str(tmp_path / "r20-dense-cpu60"))
    assert "--rank budget:macs=0.2500 " in ready and f"--out {tmp_path / name}" in ready


def test_latency_is_timed_against_the_dense_model_and_shown_as_a_ratio() -> None:
    from rankwise.bench.cifar10_collect import latency_vs_dense
    from rankwise.bench.cifar10_report import model_table

    dense = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 8 * 8, 10))
    small = FORMATS["channel"].from_dense(dense[0], 2)
    lat = latency_vs_dense(nn.Sequential(small, *dense[1:]), dense, (3, 8, 8), 0.005, 1)
    assert set(lat) == {"latency_ms", "dense_latency_ms", "latency_bf16_ms",
                        "dense_latency_bf16_ms", "latency_ort_ms", "dense_latency_ort_ms",
                        "latency_threads", "bf16_native"}
    assert all(v > 0 for k, v in lat.items() if k != "bf16_native")
    rows = suite_rows(("r20",), schedule="cpu40")
    metrics = {"acc": 90.0, "params": 10, "macs": 5, "flops_reference": 5, "latency_ms": 1.0,
               "dense_latency_ms": 2.0, "latency_bf16_ms": 4.0, "dense_latency_bf16_ms": 3.0,
               "latency_ort_ms": 0.2, "dense_latency_ort_ms": 0.3, "latency_threads": 1}
    lines = model_table("resnet20", rows, {"r20-dense": {"metrics": metrics}})
    assert "| 2.00 / 0.75 / 1.50 |" in next(line for line in lines if line.startswith("| dense"))
    assert ("Dense model at batch 1 (1 thread): 2.000 ms eager fp32, 3.000 ms eager bf16, "
            "0.300 ms ONNX Runtime fp32.") in lines
    emulated = model_table("resnet20", rows, {"r20-dense": {"metrics": {**metrics,
                                                                         "bf16_native": False}}})
    assert "| 2.00 / 0.75 (emulated) / 1.50 |" in next(
        line for line in emulated if line.startswith("| dense"))


def test_latency_without_onnx_runtime_records_why_and_keeps_the_eager_pairs(monkeypatch) -> None:
    import sys

    from rankwise.bench.cifar10_collect import latency_vs_dense

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    dense = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    lat = latency_vs_dense(dense, dense, (3, 8, 8), 0.005, 1)
    assert "latency_ort_ms" not in lat and "pip install" in lat["latency_ort_error"]
    assert lat["latency_ms"] > 0 and lat["latency_bf16_ms"] > 0


def test_cli_lists_pending_runs_of_one_schedule_and_refuses_an_unknown_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rankwise.cli import main

    (tmp_path / "r20-dense-cpu60").mkdir()
    (tmp_path / "r20-dense-cpu60" / "checkpoint.pt").write_bytes(b"")
    assert main(["bench", "cifar10", "--action", "pending", "--models", "r20", "--schedule",
                 "cpu60", "--out", str(tmp_path), "--results", str(tmp_path / "none")]) == 0
    lines = capsys.readouterr().out.splitlines()
    dense = next(line for line in lines if "--out " + str(tmp_path / "r20-dense-cpu60") in line)
    assert dense.endswith(" --resume")  # stopped after an epoch: continues
    assert not any("r56-" in line or "--epochs 40 " in line for line in lines)
    assert main(["bench", "cifar10", "--action", "pending", "--schedule", "cpu50"]) == 2
    assert "--schedule 'cpu50'" in capsys.readouterr().err


def test_resnet56_runs_the_issue_rows_and_the_equal_macs_baseline_only() -> None:
    r56 = {r.name for r in suite_rows(("r56",), schedule="cpu60")}
    assert "r56-decomp-nc-ft-at-trpnu-nc-cpu60" in r56 and "r56-trpnu-vh-cpu60" in r56
    assert not any("e97" in n or "trpnu-nc-ft" in n for n in r56)
    r20 = {r.name for r in suite_rows(("r20",), schedule="cpu60")}
    assert "r20-trpnu-nc-e97-m10-cpu60" in r20 and "r20-trpnu-nc-ft-cpu60" in r20


def test_speed_claim_counts_compressed_rows_faster_than_dense_per_deployment() -> None:
    from rankwise.bench.cifar10_report import speed_claim

    rows = suite_rows(("r20",), schedule="cpu60")
    times = {"dense_latency_ms": 2.0, "dense_latency_bf16_ms": 1.0, "dense_latency_ort_ms": 0.5}

    def result(macs: int, fp32: float, bf16: float, ort: float | None) -> dict[str, Any]:
        m = {"macs": macs, "latency_ms": fp32, "latency_bf16_ms": bf16, **times}
        if ort is not None:
            m["latency_ort_ms"] = ort
        return {"metrics": m}

    results = {"r20-dense-cpu60": result(100, 2.0, 1.0, 0.5),
               "r20-trp-nc-cpu60": result(20, 1.0, 2.0, 0.25),   # 5x fewer MACs
               "r20-trp-vh-cpu60": result(50, 4.0, 0.5, None),   # not timed in ORT
               "r20-sfw-nuc-cpu60": result(99, 1.0, 0.5, 0.1)}   # not compressed: left out
    assert speed_claim(rows, results) == [
        "- compressed rows faster than dense at batch 1: eager fp32 1 of 2 (best 2.00×); "
        "eager bf16 1 of 2 (best 2.00×); ONNX Runtime fp32 1 of 1 (best 2.00×)."]
    del results["r20-dense-cpu60"]
    assert speed_claim(rows, results) == []


def test_an_equal_accuracy_at_the_same_macs_is_called_a_tie() -> None:
    rows = suite_rows(("r20",), schedule="cpu40")
    matched = next(r for r in rows if r.notes.get("at_macs_of") == "r20-trpnu-nc")
    results = {"r20-dense": {"metrics": {"acc": 91.0, "flops_reference": 400}},
               "r20-trpnu-nc": {"metrics": {"acc": 79.13, "flops_reference": 65}},
               matched.name: {"metrics": {"acc": 79.13, "flops_reference": 66}}}
    line = next(x for x in claims(rows, results) if x.startswith("- TRP+Nu NC:"))
    assert line.endswith("at the same MACs (79.13 at 6.06×): no, a tie.")
