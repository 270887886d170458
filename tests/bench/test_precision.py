"""The fp32-vs-bf16 section is rendered from recorded runs (no numbers of its own)."""

from __future__ import annotations

import json

from rankwise.bench.precision import section


def _run(root, name, precision, times, acc):
    d = root / "precision" / name
    d.mkdir(parents=True)
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
    assert "| a-bf16 | resnet20 (cifar10) | bf16 | 1 | 3 | 80.00 | 50.0 | 1.80 |" in text
    assert "| b-fp32 | resnet20 (cifar10) | fp32 | 1 | 3 | 79.00 | 90.0 | 1.00 |" in text
    assert section(tmp_path / "none") == ""
