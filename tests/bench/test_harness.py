import json

import pytest

from rankwise.bench.harness import Cell, load_results, run_cells
from rankwise.bench.papers import compare_markdown
from rankwise.bench.report import plot_pareto, summarize, to_markdown


def _fake_runner(calls):
    def run(cell):
        calls.append(cell.key)
        if cell.params.get("boom"):
            raise RuntimeError("cell exploded")
        p = cell.params
        return {"group": "syn/tiny", "method": p["method"], "level": p["level"], "seed": p["seed"],
                "acc": 90.0 - p["cut"] * 10 + p["seed"], "params": 1000 * (1 - p["cut"]),
                "macs": 5000 * (1 - p["cut"]), "latency_ms": 2.0 * (1 - p["cut"] / 2),
                "train_seconds": 1.0}
    return run


def _cells():
    cells = [Cell(f"dense/s{s}", {"method": "dense", "level": "-", "seed": s, "cut": 0.0})
             for s in (0, 1)]
    for m in ("trp", "sfw"):
        for cut in (0.5, 0.75):
            cells.append(Cell(f"{m}/{cut}/s0", {"method": m, "level": f"{cut}", "seed": 0,
                                               "cut": cut}))
    return cells


def test_run_cells_resumes_and_reuses_finished(tmp_path):
    calls = []
    cells = _cells()
    run_cells(cells[:3], _fake_runner(calls), tmp_path, progress=False)
    assert calls == [c.key for c in cells[:3]]
    calls.clear()
    results = run_cells(cells, _fake_runner(calls), tmp_path, progress=False)
    assert calls == [c.key for c in cells[3:]]  # finished cells reused, not rerun
    assert len(results) == len(cells) and all(r["status"] == "done" for r in results)
    assert len(load_results(tmp_path)) == len(cells)
    env = results[0]["env"]
    assert {"date", "command", "torch", "rankwise"} <= set(env)


def test_changed_params_rerun_and_failures_are_recorded_then_retried(tmp_path):
    calls = []
    cell = Cell("x", {"method": "dense", "level": "-", "seed": 0, "cut": 0.0, "boom": True})
    [r] = run_cells([cell], _fake_runner(calls), tmp_path, progress=False)
    assert r["status"] == "failed" and "cell exploded" in r["error"]
    assert load_results(tmp_path) == []
    fixed = Cell("x", {"method": "dense", "level": "-", "seed": 0, "cut": 0.0})
    [r] = run_cells([fixed], _fake_runner(calls), tmp_path, progress=False)
    assert r["status"] == "done" and calls == ["x", "x"]
    data = json.loads((tmp_path / "cells" / "x.json").read_text())
    assert data["status"] == "done"


def test_duplicate_keys_rejected(tmp_path):
    with pytest.raises(ValueError):
        run_cells([Cell("a"), Cell("a")], lambda c: {}, tmp_path, progress=False)


def test_summary_table_and_plots(tmp_path):
    results = run_cells(_cells(), _fake_runner([]), tmp_path, progress=False)
    rows = summarize(results)
    dense = next(r for r in rows if r.method == "dense")
    assert dense.n_seeds == 2 and dense.acc_mean == pytest.approx(90.5)
    assert dense.acc_std == pytest.approx(0.5)
    trp = next(r for r in rows if r.method == "trp" and r.level == "0.5")
    assert trp.params_x == pytest.approx(2.0) and trp.macs_x == pytest.approx(2.0)
    assert trp.d_acc == pytest.approx(85.0 - 90.5)
    assert trp.latency_x == pytest.approx(2.0 / 1.5)
    md = to_markdown(rows)
    assert md.count("\n") == len(rows) + 2 and "| syn/tiny | trp | 0.5 |" in md
    pngs = plot_pareto(rows, tmp_path / "pareto.png")
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_lists_paper_rows():
    md = compare_markdown("trp")
    assert "90.50" in md and "91.74" in md
    with pytest.raises(KeyError):
        compare_markdown("nope")


def test_latency_ratio_prefers_interleaved_reference(tmp_path):
    def run(cell):
        res = {"group": "g", "method": cell.key, "level": "-", "seed": 0, "acc": 50.0,
               "params": 10, "macs": 10, "latency_ms": 2.0}
        if cell.key != "dense":
            res["latency_ref_ms"] = 5.0  # the dense model timed alongside, under the same load
        return res

    rows = summarize(run_cells([Cell("dense"), Cell("x")], run, tmp_path, progress=False))
    x = next(r for r in rows if r.method == "x")
    assert x.latency_x == pytest.approx(2.5)  # 5 / 2, not the dense row's 2 / 2


def test_failures_are_summarised_in_one_short_line(tmp_path):
    from rankwise.bench.harness import failure_line

    long = "x" * 400
    results = run_cells([Cell("boom/s0", {"boom": True, "why": long})],
                        lambda c: (_ for _ in ()).throw(RuntimeError(f"bad\n{long}")), tmp_path,
                        progress=False)
    line = failure_line(results[0])
    assert line.startswith("FAILED boom/s0: RuntimeError: bad") and len(line) <= 160
    assert "\n" not in line and long not in line


def test_cell_identity_changes_with_params_and_is_stored(tmp_path):
    a, b = Cell("k", {"epochs": 1}), Cell("k", {"epochs": 3})
    assert a.identity != b.identity and a.identity == Cell("k", {"epochs": 1}).identity
    run_cells([a], lambda c: {"n": 1}, tmp_path, progress=False)
    calls = []
    run_cells([b], lambda c: calls.append(c.key) or {"n": 3}, tmp_path, progress=False)
    assert calls == ["k"]
    stored = json.loads((tmp_path / "cells" / a.filename).read_text())
    assert stored["identity"] == b.identity and stored["result"] == {"n": 3}
