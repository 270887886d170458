"""The speed suite on tiny cases: harness round trip, table columns, MACs counts, resume.

No timing assertions: latencies are only checked to be positive numbers.
"""

import json

import pytest

import rankwise.bench.speed as speed
from rankwise.bench.harness import Cell
from rankwise.errors import ConfigError, RankError
from rankwise.layers.shapes import ConvSpec

TIMING = {"threads": 1, "min_run_time": 0.002, "rounds": 1, "batches": [1, 2]}
COLUMNS = ["model/layer", "format", "achieved MACs ×", "params ×", "latency dense ms",
           "latency factorized ms", "speedup", "speedup / MACs×", "batch"]

# resnet20 at width 4 on an 8×8 input, written out by hand: (name, c_in, c_out, output side).
TINY_CONVS = [("conv1", 3, 4, 8)]
TINY_CONVS += [(f"layer1.{b}.conv{k}", 4, 4, 8) for b in range(3) for k in (1, 2)]
TINY_CONVS += [("layer2.0.conv1", 4, 8, 4), ("layer2.0.conv2", 8, 8, 4)]
TINY_CONVS += [(f"layer2.{b}.conv{k}", 8, 8, 4) for b in (1, 2) for k in (1, 2)]
TINY_CONVS += [("layer3.0.conv1", 8, 16, 2), ("layer3.0.conv2", 16, 16, 2)]
TINY_CONVS += [(f"layer3.{b}.conv{k}", 16, 16, 2) for b in (1, 2) for k in (1, 2)]
FC_MACS = 16 * 10


def tiny_model_cell(fmt: str = "channel") -> Cell:
    return Cell(f"model/tiny/{fmt}/x2", {
        "kind": "model", "model": "resnet20", "model_kw": {"width": 4}, "num_classes": 10,
        "input_shape": [3, 8, 8], "format": fmt, "ratio": 2.0, "seed": 0, **TIMING})


def tiny_layer_cell() -> Cell:
    return Cell("layer/16x8/channel/x2", {"kind": "layer", "channels": 16, "hw": 8, "kernel": 3,
                                          "format": "channel", "ratio": 2.0, **TIMING})


def table_rows(md: str, first_col: str) -> list[list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    heads = [i for i, ln in enumerate(lines) if ln.startswith(f"| {first_col} |")]
    rows = []
    for i in heads:
        for ln in lines[i + 2:]:
            cells = [c.strip() for c in ln.strip("|").split("|")]
            if cells[0] == first_col:
                break
            rows.append(cells)
    return rows


def test_suite_runs_through_harness_with_hand_counted_macs_and_resumes(tmp_path, monkeypatch):
    cells = [tiny_layer_cell(), tiny_model_cell()]
    md_path = speed.run_speed_suite(tmp_path, cells=cells)
    md = md_path.read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("| model/layer |"))
    assert [c.strip() for c in header.strip("|").split("|")] == COLUMNS
    rows = table_rows(md, "model/layer")
    assert len(rows) == 4  # two cells × two batch sizes
    assert {r[-1] for r in rows} == {"1", "2"}
    assert all(float(r[4]) > 0 and float(r[5]) > 0 for r in rows)

    model = json.loads((tmp_path / "cells" / cells[1].filename).read_text())["result"]
    # Dense: Σ side²·c_out·c_in·9 + fc. Channel at rank r: first conv side²·r·c_in·9,
    # then the 1×1 side²·c_out·r.
    dense = sum(s * s * o * i * 9 for _, i, o, s in TINY_CONVS) + FC_MACS
    fact = FC_MACS
    for name, i, o, s in TINY_CONVS:
        r = model["ranks"][name]
        fact += s * s * o * i * 9 if r is None else s * s * r * (9 * i + o)
    assert set(model["ranks"]) == {n for n, *_ in TINY_CONVS}
    assert model["macs_dense"] == dense and model["macs_factorized"] == fact
    assert model["macs_x"] == pytest.approx(dense / fact, rel=1e-12)
    assert model["macs_x"] >= 2.0 * (1 - 1e-9)  # the budget is an upper bound on MACs
    assert f"{dense / fact:.3f}" in {r[2] for r in rows}
    for row in model["rows"]:
        assert row["speedup"] == pytest.approx(row["dense_ms"] / row["factorized_ms"])
        assert row["speedup_per_macs_x"] == pytest.approx(row["speedup"] / model["macs_x"])

    layer = json.loads((tmp_path / "cells" / cells[0].filename).read_text())["result"]
    # 3×3 16→16 @8²: dense 64·16·16·9 = 147456; rank r costs 64·r·(16·9 + 16) = 10240·r ≤ 73728.
    assert layer["rank"] == 7 and layer["macs_factorized"] == 71680
    assert layer["macs_x"] == pytest.approx(147456 / 71680)
    assert [p["name"] for p in layer["parts"]] == ["first", "second"]
    assert sum(p["macs"] for p in layer["parts"]) == 71680
    assert json.loads((tmp_path / "speed.json").read_text())["results"][1]["status"] == "done"

    def must_not_run(cell):
        raise AssertionError(f"finished cell {cell.key} was run again")

    monkeypatch.setattr(speed, "run_speed_cell", must_not_run)
    assert speed.run_speed_suite(tmp_path, cells=cells).read_text() == md


def test_rank_for_macs_hand_counts():
    spec = ConvSpec(64, 64, (3, 3), padding=(1, 1), bias=False)
    # dense = 56·56·64·64·9 = 3136·36864
    # spatial: H·W·(r·c·3 + n·r·3) = 3136·384·r ≤ dense/3 = 3136·12288 → r = 32
    assert speed.rank_for_macs("spatial", spec, (56, 56), 3.0) == 32
    # cp: H·W·(64r + 3r + 3r + 64r) = 3136·134·r ≤ dense/4 → r = 68
    assert speed.rank_for_macs("cp", spec, (56, 56), 4.0) == 68
    # tucker2 (r, r): H·W·(64r + 9r² + 64r) ≤ dense/2 = 3136·18432 → r = 38 (17860; 39: 18681)
    assert speed.rank_for_macs("tucker2", spec, (56, 56), 2.0) == (38, 38)
    with pytest.raises(RankError):
        speed.rank_for_macs("channel", ConvSpec(3, 4, (3, 3)), (8, 8), 40.0)


def test_decomposition_cells_ours_and_tensorly_with_subset_extrapolation(tmp_path):
    pytest.importorskip("tensorly")  # optional extra: the comparison implementation
    base = {"kind": "decomp", "model": "resnet20", "model_kw": {"width": 4}, "num_classes": 10,
            "input_shape": [3, 8, 8], "ratio": 2.0, "cp_iters": 2, "seed": 0, "threads": 1}
    cells = [Cell(f"decomp/{fmt}/{impl}", {**base, "format": fmt, "impl": impl,
                                           "include": ["layer1.*"] if fmt == "cp" else None})
             for fmt in ("tucker2", "cp") for impl in ("rankwise", "reference")]
    md = speed.run_speed_suite(tmp_path, cells=cells).read_text()
    res = {c.key: json.loads((tmp_path / "cells" / c.filename).read_text()) for c in cells}
    assert all(r["status"] == "done" for r in res.values()), res
    tucker = res["decomp/tucker2/rankwise"]["result"]
    assert tucker["layers_total"] == tucker["layers_timed"] == len(TINY_CONVS)
    assert not tucker["extrapolated"]
    cp = res["decomp/cp/reference"]["result"]
    assert cp["layers_timed"] == 6 and cp["extrapolated"]
    assert cp["extrapolated_seconds"] > cp["seconds"]
    assert "tensorly parafac" in md and "extrapolated" in md


def test_cells_are_unique_and_quick_shrinks_imagenet_inputs():
    full, quick = speed.speed_cells(False, threads=2), speed.speed_cells(True, threads=2)
    assert len({c.key for c in full}) == len(full) == len(quick)
    models = [c.params for c in quick if c.params["kind"] == "model"]
    assert {tuple(p["input_shape"]) for p in models if p["model"] == "resnet50"} == {(3, 112, 112)}
    assert {p["format"] for p in models} == {"channel", "spatial", "tucker2", "cp"}
    assert all(c.params["threads"] == 2 for c in full if c.params["kind"] != "alloc")
    alloc = [c.params for c in full if c.params["kind"] == "alloc"]
    assert full[0].params["kind"] == "alloc"  # the allocator comparison runs first
    eager = {(m, b, t, pr, "torch") for m in ("resnet50", "resnet56") for b in (1, 8)
             for t in (1, 2) for pr in ("fp32", "bf16")}
    onnx = {(m, b, 1, "fp32", "onnxruntime") for m in ("resnet50", "resnet56") for b in (1, 8)}
    assert {(p["model"], p["batch"], p["threads"], p["precision"], p.get("runtime", "torch"))
            for p in alloc} == eager | onnx
    # the eager cells' parameters (their identity in a resumed run) carry no runtime key
    assert all("runtime" not in p for p in alloc if p["precision"] == "bf16")
    assert {c.params["kind"] for c in speed.speed_cells(False, kinds=("alloc",))} == {"alloc"}
    with pytest.raises(ConfigError):
        speed.speed_cells(False, kinds=("nope",))
    with pytest.raises(ConfigError):
        speed.run_speed_cell(Cell("x", {"kind": "nope", "threads": 1}))


def test_failed_cells_are_listed():
    md = speed.speed_markdown([{"key": "model/x", "status": "failed", "error": "RankError: no"}])
    assert "Failed cells" in md and "model/x: RankError: no" in md
