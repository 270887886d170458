"""`rankwise decompose` → `rankwise load` / `rankwise profile` end to end on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import rankwise.models
from rankwise import io
from rankwise.cli import main
from rankwise.layers import FactorizedLayer


def tiny(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, num_classes))


@pytest.fixture
def zoo(monkeypatch):
    """A stand-in `tiny` architecture in `rankwise.models` (input (C, 8, 8))."""
    def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kw):
        if name != "tiny":
            raise KeyError(name)
        torch.manual_seed(0)
        return tiny(num_classes, in_channels)

    monkeypatch.setattr(rankwise.models, "create_model", create_model, raising=False)
    monkeypatch.setattr(rankwise.models, "default_input_shape", lambda name: (3, 8, 8),
                        raising=False)
    registry = getattr(rankwise.models, "registry", None)  # where name resolution looks it up
    if registry is not None:
        monkeypatch.setattr(registry, "create_model", create_model, raising=False)
        monkeypatch.setattr(registry, "default_input_shape", lambda name: (3, 8, 8),
                            raising=False)


def test_decompose_then_load_and_profile(tmp_path, zoo, capsys):
    out = tmp_path / "dec"
    rc = main(["decompose", "--model", "tiny", "--format", "tucker2", "--rank", "ratio:0.5",
               "--skip-first-conv", "--exclude", "9", "--out", str(out), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"0", "2", "5"}  # the head "9" is excluded
    assert rows["0"]["format"] is None and "first conv" in rows["0"]["note"]
    assert rows["2"]["format"] == "tucker2" and rows["2"]["rank"] == [8, 4]
    assert rows["5"]["format"] == "channel" and "1×1" in rows["5"]["note"]
    assert (out / "decompose_report.md").is_file()
    model = io.load(out)
    assert isinstance(model[2], FactorizedLayer) and isinstance(model[0], nn.Conv2d)
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 10)

    assert main(["load", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output_shape"] == [1, 10] and summary["factorized_layers"] == 2
    assert summary["params"] == sum(p.numel() for p in model.parameters())

    assert main(["profile", str(out), "--no-latency", "--json"]) == 0
    prof = json.loads(capsys.readouterr().out)
    assert prof["params"] == summary["params"] and prof["baseline"]["params_ratio"] < 1
    assert prof["latency_ms"] == {}
    assert main(["profile", str(out), "--deploy", "--precision", "bf16", "--batch-sizes", "2",
                 "--min-run-time", "0.01", "--json"]) == 0
    prof = json.loads(capsys.readouterr().out)
    assert prof["deploy"] is True and prof["precision"] == "bf16"
    assert set(prof["latency_ms"]) == set(prof["baseline"]["speedup"]) == {"2"}


def test_decompose_from_checkpoint_dir_and_safetensors(tmp_path, zoo, capsys):
    torch.manual_seed(5)
    trained = tiny()
    io.save(trained, tmp_path / "run" / "final", arch="tiny", input_shape=(3, 8, 8))
    out = tmp_path / "dec"
    assert main(["decompose", "--checkpoint", str(tmp_path / "run"), "--format", "channel",
                 "--rank", "energy:0.9999999", "--linear-format", "none", "--out",
                 str(out)]) == 0
    text = capsys.readouterr().out
    assert "saved to" in text
    model = io.load(out)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(model(x), trained.eval()(x), atol=1e-4)  # weights came from the run
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    assert main(["decompose", "--model", "tiny", "--checkpoint", str(tmp_path / "w.safetensors"),
                 "--out", str(tmp_path / "dec2"), "--json"]) == 0
    capsys.readouterr()
    save_file({k: v[:1] if v.dim() else v for k, v in trained.state_dict().items()},
              str(tmp_path / "v.safetensors"))
    assert main(["decompose", "--model", "tiny", "--checkpoint", str(tmp_path / "v.safetensors"),
                 "--out", str(tmp_path / "dec3")]) == 2  # shapes differ: one line, not a trace
    err = capsys.readouterr().err
    assert "v.safetensors" in err and "has shape" in err and "--model" in err
    assert "Traceback" not in err and not (tmp_path / "dec3").exists()


def test_cli_errors_exit_2(tmp_path, zoo, capsys):
    assert main(["decompose", "--model", "tiny", "--rank", "fixed:999", "--include", "2",
                 "--out", str(tmp_path / "o")]) == 2
    assert "2" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.json").write_text("{oops")
    assert main(["load", str(tmp_path / "bad")]) == 2
    assert "model.json" in capsys.readouterr().err
    assert main(["decompose", "--checkpoint", str(tmp_path / "x.pt"), "--model", "tiny",
                 "--out", str(tmp_path / "o")]) == 2
    assert main(["profile", "tiny", "--input-shape", "3,x", "--no-latency"]) == 2


def test_profile_model_name_with_latency(zoo, capsys):
    assert main(["profile", "tiny", "--batch-sizes", "1", "--min-run-time", "0.01"]) == 0
    assert "latency batch 1" in capsys.readouterr().out


def test_profile_in_onnx_runtime(zoo, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["profile", "tiny", "--batch-sizes", "1", "--min-run-time", "0.01",
                 "--runtime", "onnxruntime", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runtime"] == "onnxruntime" and out["latency_ms"]["1"]["median_ms"] > 0
    assert main(["profile", "tiny", "--runtime", "onnxruntime", "--precision", "bf16"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_real_zoo_resnet20_when_available(tmp_path, capsys):
    if not hasattr(rankwise.models, "create_model"):
        pytest.skip("rankwise.models.create_model not written yet")
    out = tmp_path / "r20"
    assert main(["decompose", "--model", "resnet20", "--model-arg", "width=8", "--rank",
                 "energy:0.9", "--skip-first-conv", "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    assert main(["load", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output_shape"] == [1, 10] and summary["arch"] == "resnet20"
    assert summary["arch_kwargs"] == {"width": 8} and summary["factorized_layers"] > 0
    assert main(["profile", str(out), "--no-latency", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["baseline"]["params_ratio"] < 1


def test_decompose_from_unfinished_training_run(tmp_path, zoo, capsys):
    torch.manual_seed(6)
    trained = tiny()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": {"name": "tiny", "kwargs": {}},
                                                 "input_shape": [3, 8, 8]}))
    torch.save({"model": trained.state_dict(), "optimizer": {}, "epoch": 1, "global_step": 3},
               run / "checkpoint.pt")
    out = tmp_path / "dec"
    assert main(["decompose", "--checkpoint", str(run), "--rank", "energy:0.9999999",
                 "--format", "channel", "--out", str(out), "--json"]) == 0
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(io.load(out)(x), trained.eval()(x), atol=1e-4)
    assert json.loads((out / "model.json").read_text())["meta"]["source"] == str(run)


# ---------------------------------------------------------------- pre-train paradigm end to end
TRAIN = ["--model", "smallcnn", "--width", "4", "--dataset", "synthetic", "--synthetic-size",
         "128", "--epochs", "2", "--batch-size", "32", "--lr", "0.05", "--schedule", "cosine",
         "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """`rankwise train` of a width-4 smallcnn on 128 synthetic 1×28×28 images."""
    run = tmp_path_factory.mktemp("train") / "run"
    assert main(["train", *TRAIN, "--out", str(run)]) == 0
    return run


def test_train_then_decompose_finetune(trained_run, tmp_path, capsys):
    from rankwise.cli.train import load_split
    from rankwise.train import evaluate

    out = tmp_path / "dec"
    args = ["decompose", "--checkpoint", str(trained_run), "--format", "tucker2", "--rank",
            "energy:0.9", "--finetune", "1", "--dataset", "synthetic", "--synthetic-size", "128",
            "--batch-size", "32", "--device", "cpu", "--out", str(out), "--json"]
    capsys.readouterr()
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)  # --json keeps stdout pure JSON
    report = json.loads((out / "decompose_report.json").read_text())
    assert printed["accuracy"] == report["accuracy"]
    acc = report["accuracy"]
    assert set(acc) == {"before", "decomposed", "finetuned"}
    assert all(0.0 <= v <= 1.0 for v in acc.values())
    assert report["rows"] and report["totals"]["params_ratio"] < 1
    assert report["finetune"]["train_config"]["lr"] == 0.01  # the fine-tuning default
    assert report["finetune"]["train_config"]["schedule"] == "cosine"
    assert (out / "finetune" / "checkpoint.pt").is_file()

    model = io.load(out)  # the saved model is the fine-tuned factorized one
    assert any(isinstance(m, FactorizedLayer) for m in model.modules())
    test = load_split({"name": "synthetic", "kwargs": {"size": 128, "shape": [1, 28, 28],
                                                       "num_classes": 10, "seed": 0}}, False)
    assert evaluate(model, test)["acc"] == pytest.approx(acc["finetuned"])
    before = io.load(trained_run)
    assert evaluate(before, test)["acc"] == pytest.approx(acc["before"])
    meta = json.loads((out / "model.json").read_text())["meta"]
    assert meta["accuracy"] == acc and meta["finetune_epochs"] == 1

    # resuming a finished fine-tuning run trains nothing more and saves the same model
    assert main([*args, "--resume"]) == 0
    again = io.load(out)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_decompose_uses_the_runs_dataset_and_evaluates_without_finetuning(trained_run, tmp_path,
                                                                          capsys):
    out = tmp_path / "dec"
    assert main(["decompose", "--checkpoint", str(trained_run), "--rank", "ratio:0.5",
                 "--finetune", "0", "--dataset", "synthetic", "--synthetic-size", "64",
                 "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "test accuracy: before" in text and "fine-tuned" not in text
    assert not (out / "finetune").exists()
    report = json.loads((out / "decompose_report.json").read_text())
    assert report["accuracy"]["finetuned"] is None and report["test_samples"] == 64
    # no --dataset: the run's own dataset (recorded by `rankwise train`) is used
    out2 = tmp_path / "dec2"
    assert main(["decompose", "--checkpoint", str(trained_run), "--finetune", "1",
                 "--limit-train", "64", "--batch-size", "32", "--device", "cpu", "--quiet",
                 "--out", str(out2)]) == 0
    report2 = json.loads((out2 / "decompose_report.json").read_text())
    assert report2["dataset"]["kwargs"]["size"] == 128 and report2["test_samples"] == 128
    assert report2["finetune"]["metrics"]["step"] == 2  # 64 samples / batch 32, one epoch


def test_finetune_errors_exit_2(tmp_path, zoo, capsys):
    # a bare zoo model records no dataset
    assert main(["decompose", "--model", "tiny", "--finetune", "1", "--out",
                 str(tmp_path / "o")]) == 2
    assert "--dataset" in capsys.readouterr().err
    # a negative number of epochs
    assert main(["decompose", "--model", "tiny", "--dataset", "synthetic", "--finetune", "-1",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--finetune" in capsys.readouterr().err


def test_finetune_precision_flags_reach_the_trainer(trained_run, tmp_path, capsys):
    out = tmp_path / "dec16"
    assert main(["decompose", "--checkpoint", str(trained_run), "--format", "channel", "--rank",
                 "ratio:0.5", "--finetune", "1", "--dataset", "synthetic", "--synthetic-size",
                 "64", "--batch-size", "32", "--precision", "bf16", "--channels-last",
                 "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    train = json.loads((out / "finetune" / "config.json").read_text())["train"]
    assert train["precision"] == "bf16" and train["channels_last"] is True
