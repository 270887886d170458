"""The latency budget measured in ONNX Runtime: every option and the dense model timed as
float32 ONNX graphs, its own cache key, and the settings it refuses."""

import pytest
import torch
from torch import nn

import rankwise.surgery.latency_measure as measure
from rankwise.errors import ConfigError
from rankwise.layers.shapes import ConvSpec
from rankwise.surgery.latency_budget import LatencyBudget, latency_plan, parse_latency_budget
from rankwise.surgery.latency_table import DENSE, TableKey


def test_runtime_is_validated_and_round_trips_through_the_policy_string():
    with pytest.raises(ConfigError, match="float32 graphs"):
        LatencyBudget(ratio=0.5, runtime="onnxruntime", precision="bf16")
    with pytest.raises(ConfigError, match="runtime='tvm'"):
        LatencyBudget(ratio=0.5, runtime="tvm")
    p = parse_latency_budget("budget:latency=0.5,runtime=onnxruntime,batch=1")
    assert p.runtime == "onnxruntime" and not p.channels_last and p.batch == 1
    assert parse_latency_budget(str(p)) == p
    assert "runtime" not in str(LatencyBudget(ratio=0.5))


def test_eager_keys_are_unchanged_and_onnx_keys_name_the_runtime_version():
    ort = pytest.importorskip("onnxruntime")
    eager = TableKey.here("fp32", 1, 8, True)
    assert "runtime" not in eager.to_dict() and not eager.onnx  # cached eager tables still load
    onnx = TableKey.here("fp32", 1, 8, False, "onnxruntime")
    assert onnx.onnx and onnx.to_dict()["runtime"] == f"onnxruntime {ort.__version__}"
    assert onnx.digest() != TableKey.here("fp32", 1, 8, False).digest()


def test_each_option_is_timed_as_its_own_onnx_graph(monkeypatch):
    pytest.importorskip("onnxruntime")
    exported = []

    def spy(module, shape, example=None):
        exported.append(type(module).__name__)
        return real(module, shape, example)

    real = measure.onnx_runner
    monkeypatch.setattr(measure, "onnx_runner", spy)
    spec = ConvSpec.from_conv(nn.Conv2d(16, 16, 3, padding=1))
    options = [DENSE, ("channel", (4,)), ("spatial", (8,))]
    ms = measure.measure_layer(spec, (8, 8), options, "fp32", 2, False, rounds=3, onnx=True)
    assert set(ms) == set(options) and all(v > 0 for v in ms.values())
    assert exported == ["Conv2d", "ChannelLowRankConv2d", "SpatialLowRankConv2d"]


def test_plan_in_onnx_runtime_measures_its_own_table(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1)).eval()
    policy = LatencyBudget(ratio=0.9, runtime="onnxruntime", batch=2, threads=1,
                           cache_dir=str(tmp_path), formats=("channel",))
    plan = latency_plan(model, None, policy, (3, 8, 8))
    assert plan.table_key["runtime"].startswith("onnxruntime ")
    assert set(plan.choices) == {"0", "3", "5"} and plan.dense_ms > 0
    assert all(r["source"] == "measured" for r in plan.rows)
    assert list(tmp_path.glob("*.json"))  # the ONNX Runtime table is cached on its own key


def test_cli_target_latency_in_onnx_runtime_is_one_policy_string():
    import argparse

    from rankwise.cli.decompose import rank_of

    args = argparse.Namespace(rank=None, target_latency=2.5, latency_precision="fp32",
                              latency_runtime="onnxruntime")
    policy = parse_latency_budget(rank_of(args))
    assert policy.runtime == "onnxruntime" and policy.target_ms == 2.5
