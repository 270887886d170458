"""`rankwise analyze` and `rankwise compress` end to end on a tiny trained run (synthetic data)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import rankwise.models
from rankwise import io
from rankwise.cli import main
from rankwise.compress.artifact import load_compressed
from rankwise.compress.pipeline import PipelineConfig, run_pipeline
from rankwise.data import load_dataset
from rankwise.layers import FactorizedLayer
from rankwise.train import TrainConfig, Trainer, evaluate

SHAPE = (3, 8, 8)
PNG = b"\x89PNG\r\n\x1a\n"


def tiny(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, num_classes))


@pytest.fixture
def zoo(monkeypatch):
    """A stand-in `tiny` architecture in `rankwise.models` (input (C, 8, 8))."""
    real = rankwise.models.create_model

    def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kw):
        if name != "tiny":
            return real(name, num_classes=num_classes, in_channels=in_channels, **kw)
        return tiny(num_classes, in_channels)

    monkeypatch.setattr(rankwise.models, "create_model", create_model)
    registry = getattr(rankwise.models, "registry", None)  # where name resolution looks it up
    if registry is not None:
        monkeypatch.setattr(registry, "create_model", create_model, raising=False)


@pytest.fixture
def run_dir(tmp_path, zoo):
    """A trainer run directory: config.json (with the dataset) + model.json/.safetensors."""
    train = load_dataset("synthetic", train=True, size=256, shape=SHAPE, num_classes=10)
    test = load_dataset("synthetic", train=False, size=128, shape=SHAPE, num_classes=10)
    torch.manual_seed(0)
    out = tmp_path / "run"
    cfg = TrainConfig(epochs=6, batch_size=32, lr=0.05, schedule="none", quiet=True,
                      augment=False)
    meta = {"model": {"name": "tiny", "kwargs": {}}, "input_shape": list(SHAPE),
            "dataset": {"name": "synthetic", "kwargs": {"size": 128, "shape": list(SHAPE),
                                                        "num_classes": 10, "seed": 0}}}
    Trainer(tiny(), cfg, train, test, out, meta=meta).fit()
    return out


def test_analyze_run_dir_writes_reports_and_plots(run_dir, tmp_path, capsys):
    out = tmp_path / "an"
    assert main(["analyze", str(run_dir), "--out", str(out), "--scheme", "spatial"]) == 0
    assert "rank analysis" in capsys.readouterr().out
    for f in ("report.md", "report.json", "spectra.png", "erank.png"):
        assert (out / f).is_file(), f
    assert (out / "spectra.png").read_bytes()[:8] == PNG
    report = json.loads((out / "report.json").read_text())
    model = io.load(run_dir)
    expect = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [row["name"] for row in report["layers"]] == expect
    assert report["scheme"] == "spatial" and report["arch"] == "tiny"
    conv2 = report["layers"][1]
    assert conv2["matrix_shape"] == [32 * 3, 16 * 3]
    assert 1 <= conv2["erank"] <= conv2["max_rank"] == 48
    md = (out / "report.md").read_text()
    assert "spectra.png" in md and "| `2` |" in md


def test_analyze_model_name_json(capsys):
    assert main(["analyze", "lenet5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    model = rankwise.models.create_model("lenet5")
    n = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert data["summary"]["layers"] == n == len(data["layers"])


def test_compress_end_to_end_and_reload(run_dir, tmp_path, capsys):
    out = tmp_path / "c"
    argv = ["compress", str(run_dir), "--lowrank", "tucker2:energy:0.9", "--skip-first-conv",
            "--prune", "magnitude:0.5", "--quantize", "int8", "--entropy-code", "zstd",
            "--dataset", "synthetic", "--limit-test", "96", "--out", str(out), "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    stages = report["stages"]
    assert [s["stage"] for s in stages] == ["baseline", "lowrank", "prune", "quantize",
                                            "entropy"]
    assert printed["stages"] == stages and report["test_samples"] == 96
    assert all(0.0 <= s["acc"] <= 1.0 for s in stages)
    base = stages[0]
    assert base["acc"] > 0.5  # the run learned the synthetic task (chance is 0.1)
    assert stages[-1]["acc"] == stages[-2]["acc"]  # entropy coding is lossless
    assert stages[-1]["bytes_stored"] < stages[-2]["bytes_fp32"]
    assert (out / "report.md").read_text().count("\n| ") == 6

    # the directory reloads to the pipeline's final model, bit for bit
    reloaded = load_compressed(out)
    assert any(isinstance(m, FactorizedLayer) for m in reloaded.modules())
    data = load_dataset("synthetic", train=False, size=128, shape=SHAPE,
                        num_classes=10).subset(slice(0, 96))
    assert evaluate(reloaded, data, 64, "cpu")["acc"] == stages[-1]["acc"]
    cfg = PipelineConfig(lowrank="tucker2:energy:0.9", skip_first_conv=True,
                         prune="magnitude:0.5", quantize="int8", entropy_code="zstd")
    final = run_pipeline(io.load(run_dir), cfg, SHAPE).model
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(x), final(x))

    # analyze reads the compressed directory too
    assert main(["analyze", str(out), "--out", str(tmp_path / "an2"), "--no-plots"]) == 0
    rows = json.loads((tmp_path / "an2" / "report.json").read_text())["layers"]
    assert "tucker2" in {r["kind"] for r in rows}


def test_compress_dataset_from_run_config_and_filter_prune(run_dir, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["compress", str(run_dir), "--prune", "filters:0.25", "--quantize", "int8",
                 "--limit-test", "64", "--out", str(out), "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["name"] == "synthetic" and report["test_samples"] == 64
    assert [s["stage"] for s in stages] == ["baseline", "prune", "quantize"]
    assert stages[1]["effective_macs"] < stages[1]["macs"]
    assert (out / "model.int8.safetensors").is_file()
    model = load_compressed(out)
    assert model(torch.zeros(1, *SHAPE)).shape == (1, 10)


def test_compress_reads_the_dataset_a_decompose_output_records(run_dir, tmp_path, capsys):
    """A `rankwise decompose` output has no config.json; its model.json meta names the data."""
    from rankwise.io.model_file import save
    from rankwise.surgery.decompose import decompose

    trained = load_compressed(run_dir)
    model, _ = decompose(trained, format="channel", rank="ratio:0.5")
    meta = json.loads((run_dir / "config.json").read_text())
    saved = save(model, tmp_path / "dec", arch="tiny", input_shape=SHAPE,
                 meta={"command": "decompose", "dataset": meta["dataset"]})
    out = tmp_path / "c"
    assert main(["compress", str(saved), "--quantize", "int8", "--limit-test", "48", "--out",
                 str(out), "--json"]) == 0
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["name"] == "synthetic" and report["test_samples"] == 48


def test_compress_errors_are_reported(tmp_path, zoo, capsys):
    saved = io.save(tiny(), tmp_path / "m", arch="tiny", input_shape=SHAPE)  # no config.json
    assert main(["compress", str(saved), "--quantize", "int8", "--out",
                 str(tmp_path / "c")]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert main(["compress", str(saved), "--lowrank", "tucker2", "--dataset", "synthetic",
                 "--out", str(tmp_path / "c")]) == 2
    assert "FORMAT:RANKSPEC" in capsys.readouterr().err


def test_rankwise_load_reads_compressed_dir(run_dir, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["compress", str(run_dir), "--quantize", "int8", "--entropy-code", "zstd",
                 "--limit-test", "32", "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    assert main(["load", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["output_shape"] == [1, 10]
    # `rankwise eval` reads the int8 + entropy-coded directory and reproduces the last stage.
    report = json.loads((out / "report.json").read_text())
    assert main(["eval", str(out), "--limit", "32", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["samples"] == report["test_samples"] == 32
    assert evaluated["acc"] == pytest.approx(report["stages"][-1]["acc"], abs=1e-12)
    assert evaluated["loss"] == pytest.approx(report["stages"][-1]["loss"], rel=1e-6)


def test_train_cli_run_then_erank_reg_analyze_and_compress(tmp_path, capsys):
    """The real chain: `rankwise train --method erank-reg` → `analyze` → `compress`."""
    run = tmp_path / "run"
    assert main(["train", "--model", "lenet5", "--dataset", "synthetic", "--synthetic-size",
                 "64", "--epochs", "1", "--batch-size", "32", "--lr", "0.01", "--schedule",
                 "none", "--method", "erank-reg", "--reg", "l1sv", "--reg-weight", "0.01",
                 "--device", "cpu", "--quiet", "--out", str(run)]) == 0
    assert (run / "erank_report.json").is_file()
    capsys.readouterr()
    assert main(["analyze", str(run), "--no-plots", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["layers"] == 5
    out = tmp_path / "c"
    assert main(["compress", str(run), "--lowrank", "channel:budget:params=0.5", "--prune",
                 "magnitude:0.5", "--quantize", "int8", "--entropy-code", "zstd",
                 "--limit-test", "32", "--out", str(out), "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert stages[1]["params"] < stages[0]["params"]
    # (without pruning, near-Gaussian int8 weights code at ~7.5 bits and the blob's JSON
    # header can make the coded file larger than raw int8 on a model this small)
    assert stages[-1]["bytes_coded"] < stages[-1]["bytes_int8"] < stages[0]["bytes_fp32"]
    assert load_compressed(out)(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
