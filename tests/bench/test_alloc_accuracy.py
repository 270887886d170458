"""Equal-latency accuracy check: latency allocator vs a finished MACs-budget decompose run."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rankwise.bench.alloc_accuracy import conv_choices, markdown, run
from rankwise.io.model_file import load, save
from rankwise.models import create_model
from rankwise.surgery.latency_budget import mean_energy
from rankwise.train import TrainConfig
from rankwise.train.pretrain import decompose_and_finetune
from rankwise.train.runspec import load_split

SPEC = {"name": "synthetic", "kwargs": {"size": 16, "shape": [3, 8, 8], "num_classes": 10,
                                        "seed": 0}}


def _runs(tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    model = create_model("resnet20", width=4, num_classes=10)
    dense = tmp_path / "dense"
    save(model, dense, arch="resnet20", arch_kwargs={"width": 4, "num_classes": 10},
         input_shape=(3, 8, 8))
    train, test = load_split(SPEC, True), load_split(SPEC, False)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.01, schedule="cosine", quiet=True)
    macs = tmp_path / "macs"
    fitted, data = decompose_and_finetune(
        model, train, test, format="channel", rank="budget:macs=0.5", epochs=1, train_cfg=cfg,
        out_dir=macs, linear_format=None, skip_first_conv=True,
        meta={"model": {"name": "resnet20", "kwargs": {"width": 4, "num_classes": 10}}})
    data["dataset"] = SPEC
    save(fitted, macs, arch="resnet20", arch_kwargs={"width": 4, "num_classes": 10},
         input_shape=(3, 8, 8))
    (macs / "decompose_report.json").write_text(json.dumps(data, default=str))
    return dense, macs


def test_latency_arm_is_fine_tuned_with_the_macs_recipe(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RANKWISE_CACHE", str(tmp_path / "cache"))
    dense_dir, macs_dir = _runs(tmp_path)
    out = tmp_path / "lat"
    rec = run(dense_dir, macs_dir, out, "fp32", 2, "test", rounds=1, measure=False)
    assert json.loads((out / "result.json").read_text())["arms"] == rec["arms"]
    macs_arm, lat_arm = rec["arms"]
    dense = load(dense_dir)
    report = json.loads((macs_dir / "decompose_report.json").read_text())
    choices = conv_choices(dense, report)
    assert "conv1" not in choices and len(choices) == 18  # the first conv is kept, not counted
    assert macs_arm["energy"] == mean_energy(dense, choices)
    assert 0.0 < lat_arm["energy"] <= 1.0 and lat_arm["macs_x"] >= 1.0
    assert rec["finetune"]["epochs"] == 1 and rec["finetune"]["lr"] == 0.01
    tuned = json.loads((out / "finetune" / "config.json").read_text())
    assert tuned["train"]["epochs"] == 1 and tuned["train"]["batch_size"] == 16
    for arm in rec["arms"]:
        assert 0.0 <= arm["acc_finetuned"] <= 100.0 and arm["speedup"] > 0
    md = markdown(rec)
    assert md.count("| MACs allocator") == 1 and md.count("| latency allocator") == 1
    assert f"{lat_arm['acc_finetuned']:.2f}" in md


def test_onnx_runtime_arm_times_every_model_as_an_onnx_graph(tmp_path: Path, monkeypatch) -> None:
    import pytest

    pytest.importorskip("onnxruntime")
    import rankwise.bench.speed_alloc as speed_alloc
    from rankwise.bench.alloc_accuracy import section

    monkeypatch.setenv("RANKWISE_CACHE", str(tmp_path / "cache"))
    exported = []
    real = speed_alloc.onnx_runner
    monkeypatch.setattr(speed_alloc, "onnx_runner",
                        lambda m, shape, x: exported.append(m) or real(m, shape, x))
    dense_dir, macs_dir = _runs(tmp_path)
    rec = run(dense_dir, macs_dir, tmp_path / "lat", "fp32", 2, "test", rounds=1,
              measure=False, runtime="onnxruntime")
    assert rec["runtime"] == "onnxruntime" and len(exported) >= 3  # dense, MACs, latency
    assert all(arm["speedup"] > 0 for arm in rec["arms"])
    results = tmp_path / "results" / "speed"
    results.mkdir(parents=True)
    (results / "alloc_accuracy_onnxruntime.json").write_text(json.dumps(rec))
    md = section(tmp_path / "results")
    assert "(ONNX Runtime)" in md and "as float32 ONNX graphs in ONNX Runtime at batch 2" in md
