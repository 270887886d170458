"""bench.real_models: the Markdown section from hand-written JSON records; export_paths cells."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from rankwise.bench.real_models import section
from rankwise.bench.real_models_export import PATHS, export_paths


def _record(model: str) -> dict:
    ok = {"ok": True, "max_abs_err": 3e-7, "seconds": 1.0}
    return {
        "model": model, "spec": f"tv:{model}", "kind": "conv net", "rank": "ratio:0.25",
        "input_shape": [3, 224, 224], "environment": {"torch": "x", "threads": 1},
        "dense": {"params": 1000, "macs": 4_000_000_000,
                  "latency_ms": {"fp32": 10.0, "bf16": 20.0}},
        "fvcore": {"total": 4_040_000_000,
                   "by_operator": {"conv": 3_900_000_000, "linear": 100_000_000,
                                   "batch_norm": 40_000_000}},
        "variants": {
            "rankwise": {"formats": ["svd", "tucker2"], "params": 250, "macs": 2_000_000_000,
                         "latency_ms": {"fp32": 5.0, "bf16": 8.0},
                         "export": {**{p: ok for p in PATHS},
                                    "script": {"ok": False, "error": "RuntimeError: boom"}}},
            "tltorch": {"error": "ValueError: no"},
        },
    }


def test_section_ratios_and_statuses(tmp_path):
    folder = tmp_path / "real_models"
    folder.mkdir()
    (folder / "resnet50.json").write_text(json.dumps(_record("resnet50")))
    md = section(tmp_path)
    row = next(line for line in md.splitlines() if line.startswith("| resnet50 | rankwise"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:7] == ["4.00×", "2.00×", "2.00×", "2.50×"]  # dense ÷ factorized
    assert cells[7] == "ok (3e-07)" and cells[-1] == "fail: RuntimeError: boom"
    assert "| resnet50 | tltorch | fail: ValueError: no |" in md
    assert "| 4.000 G | 4.040 G | 1.010 | 1.000 |" in md  # conv + linear = 4.0 G
    assert section(tmp_path / "empty") == ""


def test_section_relative_cells_dense_layers_and_header(tmp_path):
    rec = _record("regnetx")
    rec.update(command="python -m rankwise.bench.real_models --out o --models regnetx",
               date="2026-12-06")
    rec["environment"].update(processor="x86_64", python="3.11")
    cell = {"ok": True, "max_abs_err": 2e-6, "ref_max_abs": 10.0, "seconds": 1.0}
    rec["variants"]["tltorch"] = {**rec["variants"]["rankwise"], "formats": [
        "FactorizedConv", "TuckerTensor"], "export": {p: cell for p in PATHS},
        "kept_dense": ["s1.conv2", "s2.conv2"]}
    (tmp_path / "regnetx.json").write_text(json.dumps(rec))
    md = section(tmp_path)
    row = next(line for line in md.splitlines() if line.startswith("| regnetx | tltorch"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "FactorizedConv (2 layers dense)"
    assert cells[7:] == ["ok (2e-07 rel)"] * len(PATHS)
    assert "`python -m rankwise.bench.real_models --out o --models NAME`" in md
    assert "2026-12-06" in md and "x86_64 CPU" in md and "1 thread" in md


def test_export_paths_reports_failures_per_path():
    class Unscriptable(nn.Module):
        def forward(self, *xs: torch.Tensor) -> torch.Tensor:  # TorchScript has no varargs
            return xs[0] * 2

    quick = ("trace", "script")
    cells = export_paths(nn.Sequential(nn.Linear(3, 2)).eval(), torch.randn(1, 3), paths=quick)
    assert set(cells) == set(quick) and all(c["ok"] for c in cells.values())
    assert cells["trace"]["max_abs_err"] < 1e-6
    bad = export_paths(Unscriptable(), torch.randn(1, 3), paths=quick)
    assert bad["trace"]["ok"] and not bad["script"]["ok"] and "Error" in bad["script"]["error"]


def test_main_keeps_existing_results_and_refuses_unknown_models(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    import rankwise.bench.real_models as rm

    def must_not_run(*args, **kwargs):
        raise AssertionError("an existing result was measured again")

    monkeypatch.setattr(rm, "run_model", must_not_run)
    (tmp_path / "resnet50.json").write_text('{"kept": true}')
    assert rm.main(["--out", str(tmp_path), "--models", "resnet50"]) == 0
    assert "--overwrite" in capsys.readouterr().out
    assert json.loads((tmp_path / "resnet50.json").read_text()) == {"kept": True}
    with pytest.raises(SystemExit) as e:
        rm.main(["--out", str(tmp_path), "--models", "resnet5O"])
    assert e.value.code == 2 and "resnet5O" in capsys.readouterr().err
    assert torch.is_grad_enabled()  # main leaves the process's autograd state as it was
