"""Allocator cells of the speed suite with a fake clock: structure, ratios, Markdown, section.

No timing assertions: `interleaved_ms` is replaced by fixed numbers and the latency table by the
analytic model (`measure_table=False`).
"""

import json

import pytest

import rankwise.bench.speed as speed
import rankwise.bench.speed_alloc as speed_alloc
import rankwise.bench.speed_alloc_report as speed_alloc_report
from rankwise.bench.benchmarks_md import SECTIONS
from rankwise.bench.harness import Cell
from rankwise.bench.speed_alloc_report import section


def tiny_alloc_cell(threads: int, precision: str, runtime: str = "torch") -> Cell:
    return Cell(f"alloc/tiny/t{threads}/{precision}/{runtime}", {
        "kind": "alloc", "model": "resnet20", "model_kw": {"width": 8}, "num_classes": 10,
        "input_shape": [3, 16, 16], "batch": 8, "threads": threads, "precision": precision,
        "runtime": runtime, "macs_ratio": 0.5, "latency_ratio": 0.5,
        "macs_formats": ["channel", "tucker2"], "rounds": 1, "seed": 0, "cache_dir": None,
        "measure_table": False})


@pytest.mark.filterwarnings("ignore:.*out of reach:UserWarning")
def test_alloc_cells_compare_allocators_and_skip_oversubscribed_threads(tmp_path, monkeypatch):
    calls = []

    def fake_ms(fns, rounds, block_s, clock):  # dense 10 ms, every other model 5 ms
        calls.append(len(fns))
        return [10.0] + [5.0] * (len(fns) - 1)

    monkeypatch.setattr(speed_alloc, "interleaved_ms", fake_ms)
    monkeypatch.setattr(speed_alloc, "allowed_cpus", lambda: {0})
    cells = [tiny_alloc_cell(1, "fp32"), tiny_alloc_cell(1, "bf16")]
    md = speed.run_speed_suite(tmp_path / "run", cells=cells, results_dir=tmp_path / "results",
                               command="rankwise bench speed --test").read_text()
    res = [json.loads((tmp_path / "run" / "cells" / c.filename).read_text())["result"]
           for c in cells]
    fp32, bf16 = res
    two = speed_alloc.run_alloc_cell(tiny_alloc_cell(2, "fp32").params)  # returns before work
    assert not two["measured"] and "not measured (machine busy" in two["note"]
    labels = [v["allocator"] for v in fp32["variants"]]
    assert labels == ["macs", "macs", "latency", "latency-equal", "latency-equal"]
    assert all(v["speedup"] == pytest.approx(2.0) for v in fp32["variants"])
    macs = fp32["variants"][0]
    assert macs["macs_x"] >= 2.0 * (1 - 1e-9) and 0.0 < macs["energy"] < 1.0
    assert fp32["variants"][3]["vs"] == macs["label"]
    assert fp32["variants"][3]["vs_speedup"] == pytest.approx(2.0)
    assert bf16["bf16_over_fp32"] == pytest.approx(0.5) and "bf16_over_fp32" not in fp32
    # dense + 2 MACs + latency (+ fp32 ref in bf16); then (dense, MACs, equal-latency) per format
    assert calls == [4, 3, 3, 5, 3, 3]
    assert "latency budget 0.5" in md and "bf16 is 0.50× dense fp32" in md
    data = json.loads((tmp_path / "results" / "allocators.json").read_text())
    assert data["command"] == "rankwise bench speed --test" and len(data["results"]) == 2
    assert "flags" in data["cpu_features"] and data["env"]["torch"]
    (tmp_path / "root" / "speed").mkdir(parents=True)
    (tmp_path / "root" / "speed" / "allocators.json").write_text(json.dumps(data))
    text = section(tmp_path / "root")
    assert "rankwise bench speed --test" in text and "torch dispatch" in text
    assert section(tmp_path / "nothing") == ""
    assert SECTIONS["speed-allocators"].render is section


@pytest.mark.filterwarnings("ignore:.*out of reach:UserWarning")
def test_onnx_runtime_cell_exports_each_model_once(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("RANKWISE_CACHE", str(tmp_path / "cache"))
    exported, real = [], speed_alloc.onnx_runner
    monkeypatch.setattr(speed_alloc, "onnx_runner",
                        lambda m, shape, x: exported.append(id(m)) or real(m, shape, x))
    def equal_ms(fns, rounds, block_s, clock):  # run each model once; every time is 4 ms
        for f in fns:
            f()
        return [4.0] * len(fns)

    monkeypatch.setattr(speed_alloc, "interleaved_ms", equal_ms)
    monkeypatch.setattr(speed_alloc, "allowed_cpus", lambda: {0})
    res = speed_alloc.run_alloc_cell(tiny_alloc_cell(1, "fp32", "onnxruntime").params)
    assert res["measured"] and res["runtime"] == "onnxruntime"
    assert "onnxruntime" in json.dumps(res["latency_plan"]["table_key"])
    # dense, 2 MACs models, latency model; then one equal-latency model per MACs format (one
    # build each: every time is equal, so no second pass): the dense and MACs models reused
    assert len(exported) == len(set(exported)) == 4 + 2
    md = speed_alloc_report.alloc_markdown([{"status": "done", "result": res}])
    assert "| fp32, ONNX Runtime | dense" in md and "ONNX Runtime cells" not in md


def test_results_file_keeps_settings_a_partial_run_did_not_touch(tmp_path, monkeypatch):
    def result(precision: str, ms: float, runtime: str = "torch") -> dict:
        return {"kind": "alloc", "model": "m", "input_shape": [3, 8, 8], "batch": 1,
                "threads": 1, "precision": precision, "runtime": runtime, "measured": False,
                "note": f"{ms}"}

    def records(*results, command: str) -> list[dict]:
        return [{"status": "done", "result": r, "env": {"command": command, "date": "D-" + command}}
                for r in results]

    speed_alloc.write_alloc_results(tmp_path, records(result("fp32", 1), result("bf16", 2),
                                                      command="first"), "first")
    path = speed_alloc.write_alloc_results(
        tmp_path, records(result("bf16", 3), result("fp32", 4, "onnxruntime"), command="second"),
        "second")
    data = json.loads(path.read_text())
    got = [(r["precision"], r.get("runtime"), r["note"], r["command"], r["date"])
           for r in data["results"]]
    assert got == [("fp32", "torch", "1", "first", "D-first"),
                   ("bf16", "torch", "3", "second", "D-second"),
                   ("fp32", "onnxruntime", "4", "second", "D-second")]
    md = speed_alloc_report.alloc_markdown([{"status": "done", "result": r}
                                            for r in data["results"]])
    assert "- `first` (D-first): m b1 t1 fp32" in md
    assert "- `second` (D-second): m b1 t1 bf16, m b1 t1 onnxruntime" in md
