"""Allocator cells of the speed suite with a fake clock: structure, ratios, Markdown, section.

No timing assertions: `interleaved_ms` is replaced by fixed numbers and the latency table by the
analytic model (`measure_table=False`).
"""

import json

import pytest

import rankwise.bench.speed as speed
import rankwise.bench.speed_alloc as speed_alloc
from rankwise.bench.benchmarks_md import SECTIONS
from rankwise.bench.harness import Cell
from rankwise.bench.speed_alloc_report import section


def tiny_alloc_cell(threads: int, precision: str) -> Cell:
    return Cell(f"alloc/tiny/t{threads}/{precision}", {
        "kind": "alloc", "model": "resnet20", "model_kw": {"width": 8}, "num_classes": 10,
        "input_shape": [3, 16, 16], "batch": 8, "threads": threads, "precision": precision,
        "macs_ratio": 0.5, "latency_ratio": 0.5, "macs_formats": ["channel", "tucker2"],
        "rounds": 1, "seed": 0, "cache_dir": None, "measure_table": False})


@pytest.mark.filterwarnings("ignore:.*out of reach:UserWarning")
def test_alloc_cells_compare_allocators_and_skip_oversubscribed_threads(tmp_path, monkeypatch):
    calls = []

    def fake_ms(fns, rounds, block_s, clock):  # dense 10 ms, every other model 5 ms
        calls.append(len(fns))
        return [10.0] + [5.0] * (len(fns) - 1)

    monkeypatch.setattr(speed_alloc, "interleaved_ms", fake_ms)
    monkeypatch.setattr(speed_alloc.os, "sched_getaffinity", lambda pid: {0})
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
