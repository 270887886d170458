"""The fp32-vs-bf16 section is rendered from recorded runs (no numbers of its own)."""

from __future__ import annotations

import json

from rankwise.bench.precision import section


def _run(root, name, precision, times, acc, machine=None):
    d = root / "precision" / name
    d.mkdir(parents=True)
    if machine is not None:
        (d / "summary.json").write_text(json.dumps({"machine": machine}))
    (d / "config.json").write_text(json.dumps({
        "model": {"name": "resnet20"}, "dataset": {"name": "cifar10"},
        "train": {"precision": precision, "epochs": len(times), "schedule": "cosine", "lr": 0.1,
                  "weight_decay": 1e-4, "batch_size": 128, "seed": 0, "num_threads": 1}}))
    rows = [{"event": "step", "step": 1}] + [
        {"event": "epoch", "epoch": i + 1, "time_s": t, "test_acc": acc} for i, t in
        enumerate(times)]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_section_compares_against_the_fp32_run(tmp_path):
    _run(tmp_path, "a-bf16", "bf16", [50.0, 40.0, 60.0], 0.8)
    _run(tmp_path, "b-fp32", "fp32", [80.0, 100.0, 90.0], 0.79)
    text = section(tmp_path)
    old = "not recorded | resnet20 (cifar10)"
    assert f"| a-bf16 | {old} | bf16 | 1 | 3 | 80.00 | 50.0 | 1.80 |" in text
    assert f"| b-fp32 | {old} | fp32 | 1 | 3 | 79.00 | 90.0 | 1.00 |" in text
    assert section(tmp_path / "none") == ""


def test_each_cpu_is_compared_with_its_own_fp32_run(tmp_path):
    avx2 = {"cpu": "AMD EPYC", "flags": ["avx2", "fma"], "torch_cpu_capability": "AVX2"}
    amx = {"cpu": "Xeon", "flags": ["amx_bf16", "avx512_bf16"], "torch_cpu_capability": "AVX512"}
    _run(tmp_path, "a-bf16", "bf16", [80.0], 0.8, avx2)
    _run(tmp_path, "a-fp32", "fp32", [10.0], 0.8, avx2)
    _run(tmp_path, "b-bf16", "bf16", [5.0], 0.8, amx)
    _run(tmp_path, "b-fp32", "fp32", [10.0], 0.8, amx)
    text = section(tmp_path)
    assert "| a-bf16 | AMD EPYC, AVX2 | resnet20 (cifar10) | bf16 | 1 | 1 | 80.00 | 80.0 | " \
        "0.12 |" in text
    assert "| b-bf16 | Xeon, AVX512 + amx_bf16 + avx512_bf16 | resnet20 (cifar10) | bf16 | 1 | " \
        "1 | 80.00 | 5.0 | 2.00 |" in text


def test_settings_state_the_data_limits(tmp_path):
    _run(tmp_path, "a-fp32", "fp32", [10.0], 0.5)
    config = tmp_path / "precision" / "a-fp32" / "config.json"
    doc = json.loads(config.read_text())
    doc["dataset"].update(limit_train=2560, limit_test=1000)
    config.write_text(json.dumps(doc))
    assert "seed 0, first 2560 training images, first 1000 test images." in section(tmp_path)
