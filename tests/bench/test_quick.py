"""The method suite end to end on a tiny synthetic suite (real CLI, real training)."""

import dataclasses
import json

import pytest

from rankwise.bench.harness import run_cells
from rankwise.bench.quick import (
    COMPRESSION_AWARE,
    QUICK,
    SUITES,
    SuiteModel,
    run_suite_cell,
    suite_cells,
)
from rankwise.bench.report import plot_pareto, summarize, to_markdown
from rankwise.train.recipes import RECIPES as METHODS

TINY = dataclasses.replace(
    QUICK, name="tiny", dataset="synthetic",
    models=(SuiteModel("r20w4", "resnet20", {"width": 4}),),
    epochs=1, finetune=1, lr=0.05, batch_size=64, limit_train=None, limit_test=None,
    levels=(0.5,), data_options={"synthetic_size": 128}, threads=1,
    methods=tuple(m for m in ("dense", "pretrain", "trp", "sfw", "elrt", "elrt:channel",
                              "erank-reg:l1sv")
                  if m == "pretrain" or m.split(":")[0] in METHODS),
    method_options={**QUICK.method_options, "erank-reg:l1sv": {"measure": "l1sv"}},
)


def test_every_suite_has_dense_first_and_known_methods():
    for suite in SUITES.values():
        assert suite.methods[0] == "dense"
        for m in suite.methods:
            base = m.split(":")[0]
            assert base == "pretrain" or base in METHODS or base in COMPRESSION_AWARE, m


def test_suite_cells_are_unique_and_dense_first():
    cells = suite_cells(QUICK)
    keys = [c.key for c in cells]
    assert len(keys) == len(set(keys))
    assert keys[0].endswith("/dense/s0")
    per_model = 1 + (len(QUICK.methods) - 1) * len(QUICK.levels)
    assert len(cells) == per_model * len(QUICK.models) * len(QUICK.seeds)


@pytest.mark.slow
def test_tiny_suite_runs_resumes_and_reports(tmp_path):
    cells = suite_cells(TINY)
    results = run_cells(cells, lambda c: run_suite_cell(TINY, tmp_path, c), tmp_path,
                        progress=False)
    failed = [r for r in results if r["status"] != "done"]
    assert not failed, failed[0].get("traceback")
    rows = summarize(results)
    dense = next(r for r in rows if r.method == "dense")
    for r in rows:
        if r.method != "dense":
            # Every compressed row must respect the budget (params after / before <= 0.5).
            assert r.params <= 0.5 * dense.params + 1, (r.method, r.params, dense.params)
            assert r.params_x >= 1.99
    md = to_markdown(rows)
    assert md.count("| synthetic/r20w4 |") == len(rows)
    assert plot_pareto(rows, tmp_path / "pareto.png")
    # A second run reuses every finished cell (no training run is touched again).
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("summary.json")}
    again = run_cells(cells, lambda c: pytest.fail("finished cell rerun"), tmp_path,
                      progress=False)
    assert json.dumps([r["result"] for r in again], sort_keys=True) == json.dumps(
        [r["result"] for r in results], sort_keys=True)
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("summary.json")}


def test_cell_identity_covers_every_result_changing_setting():
    base = {c.key: c.identity for c in suite_cells(TINY)}
    for change in ({"epochs": 2}, {"limit_train": 64}, {"lr": 0.1}, {"schedule": "step"},
                   {"train_options": {"augment": True}},
                   {"method_options": {**TINY.method_options, "trp": {"energy": 0.8}}}):
        changed = {c.key: c.identity for c in suite_cells(dataclasses.replace(TINY, **change))}
        assert changed.keys() == base.keys()
        moved = [k for k in base if base[k] != changed[k]]
        assert moved, change
        if "method_options" in change:  # only the trp cells depend on trp's options
            assert all("/trp@" in k for k in moved)


def test_run_directories_are_named_by_their_settings(tmp_path):
    from rankwise.bench.suite_runs import run_config

    p = suite_cells(TINY)[0].params
    a = run_config(TINY, p, "dense", tmp_path)
    assert run_config(TINY, p, "dense", tmp_path).out == a.out
    b = run_config(dataclasses.replace(TINY, epochs=2), p, "dense", tmp_path)
    c = run_config(dataclasses.replace(TINY, threads=2), p, "dense", tmp_path)
    assert b.out != a.out and c.out == a.out  # threads do not change the result
    tuned = dataclasses.replace(TINY, method_train={"sfw": {"lr": 0.3, "weight_decay": 0.0}})
    sfw = run_config(tuned, p, "sfw", tmp_path)
    assert (sfw.train.lr, sfw.train.weight_decay) == (0.3, 0.0)  # the method's own lr wins
    assert run_config(tuned, p, "dense", tmp_path).train.lr == TINY.lr


def test_quick_section_renders_saved_results(tmp_path):
    from rankwise.bench.benchmarks_md import render, write_report
    from rankwise.bench.quick import save_results

    env = {"command": "rankwise bench quick --save-results", "git_commit": "abc1234",
           "machine": "x86_64", "date": "2026-01-01 00:00 UTC", "cpu_count": 2}
    results = []
    for c in suite_cells(TINY)[:2]:
        m = c.params["method"]
        results.append({"status": "done", "key": c.key, "params": c.params, "env": env,
                        "result": {"group": "synthetic/r20w4", "method": m,
                                   "level": "-" if m == "dense" else "0.5", "seed": 0,
                                   "acc": 50.0 if m == "dense" else 40.0,
                                   "params": 1000 if m == "dense" else 500, "macs": 10,
                                   "train_seconds": 1.0, "epochs": 1}})
    save_results(results, tmp_path / "quick", "tiny")
    saved = [json.loads(p.read_text()) for p in sorted((tmp_path / "quick").glob("*.json"))]
    assert {k for s in saved for k in s} >= {"command", "commit", "machine", "date", "seed",
                                             "metrics"}
    text = render(tmp_path)
    assert "## Quick suite" in text and "abc1234" in text and "1 epochs" in text
    assert text.count("| synthetic/r20w4 |") == 2 and "-10.00" in text
    path = write_report(tmp_path / "BENCHMARKS.md", tmp_path)
    assert path.read_text() == text


def test_suite_header_states_what_a_method_ran_with_beyond_the_suite():
    from rankwise.bench.report import suite_header

    cells = {c.params["method"]: c for c in suite_cells(TINY)}
    results = [{"params": cells[m].params} for m in ("dense", "sfw")]
    results[1]["params"]["settings"]["method_train"] = {"lr": 0.3}
    head = suite_header("tiny", results)
    assert "lr 0.05" in head and "Method settings: sfw: " in head and "width 3.0" in head
    assert head.rstrip().endswith("lr 0.3.") and "dense:" not in head


def test_quick_section_reports_the_timed_main_job(tmp_path):
    from rankwise.bench.quick import section

    (tmp_path / "main-job").mkdir()
    (tmp_path / "main-job" / "clean-clone.json").write_text(json.dumps(
        {"command": "rankwise bench quick", "wall_s": 630.0, "where": "fresh clone",
         "machine": "x86_64", "threads": "1 thread", "date": "2026-12-06", "commit": "abc"}))
    text = section(tmp_path)
    assert text.startswith("## Quick suite") and "**10.5 min**" in text
    assert section(tmp_path / "nothing") == ""


def test_command_line_overrides_reach_the_suite_and_compare_prints_the_paper(capsys):
    import argparse

    from rankwise.bench.papers import PAPERS
    from rankwise.cli import main
    from rankwise.cli.bench import register, suite_from_args

    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    parser = sub.choices["bench"]
    args = parser.parse_args(["quick", "--epochs", "2", "--seeds", "3,4", "--limit-train", "64",
                              "--limit-test", "32", "--methods", "dense,trp", "--threads", "1"])
    cfg = suite_from_args(args)
    assert (cfg.epochs, cfg.seeds, cfg.limit_train, cfg.limit_test, cfg.methods, cfg.threads) == (
        2, (3, 4), 64, 32, ("dense", "trp"), 1)
    assert main(["bench", "--compare", "trp"]) == 0
    text = capsys.readouterr().out
    assert PAPERS["trp"]["title"] in text
    model, data, method, base, acc, _ = PAPERS["trp"]["rows"][0]
    assert f"| {model} | {data} | {method} | {base:.2f} | {acc:.2f} |" in text
