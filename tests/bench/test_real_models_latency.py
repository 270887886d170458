"""bench.real_models_latency: the latency-budget and MACs-budget arms of one model are timed in
one run against dense (the speed-ups are dense ms ÷ arm ms), on image and on keyword token inputs;
the Markdown lines render each precision's row from the JSON."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from rankwise.bench.real_models_latency import latency_cells
from rankwise.bench.real_models_report import latency_lines, section


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.up, self.down = nn.Embedding(30, 64), nn.Linear(64, 192), nn.Linear(192, 64)
        self.head = nn.Linear(64, 5)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids)
        return self.head((h + self.down(torch.relu(self.up(h)))).mean(1))


def _conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 5))


@pytest.mark.parametrize("kind", ["tokens", "image"])
def test_cells_time_both_arms_against_dense(kind, tmp_path):
    torch.manual_seed(0)
    if kind == "tokens":
        dense, inputs = Tokens().eval(), {"input_ids": torch.randint(0, 30, (1, 12))}
        entry = {"conv": None, "linear": "svd"}
    else:
        dense, inputs = _conv().eval(), torch.randn(1, 3, 16, 16)
        entry = {"conv": "tucker2", "linear": "svd"}
    cells = latency_cells(dense, inputs, entry, 0.7, precisions=("fp32", "bf16"), rounds=2,
                          cache_dir=str(tmp_path))
    assert set(cells) == {"fp32", "bf16"}
    for prec, cell in cells.items():
        assert set(cell["arms"]) == {"latency", "macs"}
        lat, mac = cell["arms"]["latency"], cell["arms"]["macs"]
        assert lat["policy"].startswith(f"budget:latency=0.7,precision={prec},batch=1")
        assert mac["policy"] == "budget:macs=0.7"
        for arm in (lat, mac):
            assert arm["speedup"] == pytest.approx(cell["dense_ms"] / arm["ms"])
            assert arm["ms"] > 0 and arm["params_x"] > 0
        assert mac["macs_x"] >= 1 / 0.7 * (1 - 1e-9)  # the MACs budget is met exactly
        k, n = (int(v) for v in mac["factorized"].split(" of "))
        assert 0 < k <= n == 3  # of the conv / linear layers (the first conv is kept dense)


def _record(model: str) -> dict:
    arm = {"ms": 50.0, "speedup": 2.0, "macs_x": 2.5, "params_x": 2.0, "factorized": "3 of 7",
           "met": True, "policy": "p"}
    return {"model": model, "ratio": 0.6, "date": "2026-12-06", "commit": "abc1234",
            "cells": {"fp32": {"dense_ms": 100.0, "arms": {
                "latency": arm, "macs": {**arm, "speedup": 1.25, "met": True}}},
                      "bf16": {"dense_ms": 40.0, "arms": {
                          "latency": {**arm, "met": False}, "macs": arm}}}}


def test_lines_render_each_precision_and_a_missed_target(tmp_path):
    folder = tmp_path / "real_models"
    (folder / "latency").mkdir(parents=True)
    assert latency_lines(folder / "latency") == []
    (folder / "latency" / "bert_base.json").write_text(json.dumps(_record("bert_base")))
    lines = latency_lines(folder / "latency")
    assert "| bert_base | fp32 | 100.0 | 2.00× | 2.50 | 3 of 7 | 1.25× | 2.50 | 3 of 7 |" in lines
    assert any(line.startswith("| bert_base | bf16 | 40.0 | 2.00× (target out of reach) |")
               for line in lines)
    assert any("Latency budget 0.6 against MACs budget 0.6" in line and "abc1234" in line
               for line in lines)
    (folder / "resnet50.json").write_text(json.dumps({
        "model": "resnet50", "spec": "tv:resnet50", "kind": "conv net", "rank": "ratio:0.25",
        "environment": {}, "dense": {"params": 1, "macs": 1, "latency_ms": {}},
        "variants": {}}))
    assert "| bert_base | fp32 | 100.0 |" in section(tmp_path)  # below the matrix
