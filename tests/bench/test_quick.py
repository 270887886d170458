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
from rankwise.methods import METHODS

TINY = dataclasses.replace(
    QUICK, name="tiny", dataset="synthetic",
    models=(SuiteModel("r20w4", "resnet20", {"width": 4}),),
    epochs=1, finetune=1, lr=0.05, batch_size=64, limit_train=None, limit_test=None,
    levels=(0.5,), extra_train_args=("--synthetic-size", "128"), threads=1,
    methods=tuple(m for m in ("dense", "pretrain", "trp", "sfw", "elrt", "elrt:channel",
                              "erank-reg:l1sv")
                  if m == "pretrain" or m.split(":")[0] in METHODS),
    method_args={**QUICK.method_args, "erank-reg:l1sv": ("--erank-reg-measure", "l1sv")},
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
