"""`rankwise export`: a deployment copy that reloads with its settings and stays within bf16
tolerance of float32; refuses a foreign output folder."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import rankwise
from rankwise.cli import main
from rankwise.io.export_precision import load_deploy


def _saved(tmp_path):
    torch.manual_seed(0)
    model = rankwise.create_model("resnet20", width=4).eval()
    small, _ = rankwise.decompose(model, format="tucker2", rank="ratio:0.5")
    rankwise.save(small, tmp_path / "m", input_shape=(3, 32, 32))
    return small


def test_export_bf16_reloads_deployed_and_close_to_fp32(tmp_path, capsys):
    small = _saved(tmp_path)
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "d"), "--check"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["precision"] == "bf16" and summary["max_abs_diff_vs_fp32_relative"] < 5e-2
    deployed = load_deploy(tmp_path / "d")
    assert deployed.precision == "bf16"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref, got = small.eval()(x), deployed(x).float()
    assert 0 < float((got - ref).abs().max()) < 5e-2 * float(ref.abs().max())
    again = rankwise.load(tmp_path / "d")  # the float32 weights load as a plain model too
    with torch.no_grad():
        assert torch.equal(again.eval()(x), ref)


def test_export_refuses_a_foreign_output_folder(tmp_path, capsys):
    _saved(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--precision=fp16"])
def test_export_bad_precision_is_one_line(tmp_path, capsys, flag):
    _saved(tmp_path)
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "d"), flag]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_export_onnx_runs_in_onnx_runtime_like_float32(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from rankwise.io.onnx_file import OnnxModel

    small = _saved(tmp_path)
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "o"), "--format", "onnx",
                 "--check"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "onnx" and summary["precision"] == "fp32"
    assert summary["max_abs_diff_vs_fp32_relative"] < 1e-5
    info = json.loads((tmp_path / "o" / "onnx.json").read_text())
    assert info["input_shape"] == [3, 32, 32] and info["input_names"] == ["input"]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = small.eval()(x)
    got = OnnxModel(tmp_path / "o" / "model.onnx")(x)
    assert float((got - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    # an earlier ONNX export is this command's own output: replaced on request of the same path
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "o"), "--format", "onnx"]) == 0


def test_export_onnx_of_a_model_past_the_protobuf_limit_keeps_a_data_file(tmp_path, capsys,
                                                                           monkeypatch):
    pytest.importorskip("onnxruntime")
    import rankwise.io.onnx_file as onnx_file

    _saved(tmp_path)
    monkeypatch.setattr(onnx_file, "PROTO_LIMIT", 1024)
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "o"), "--format", "onnx",
                 "--check"]) == 0
    assert json.loads(capsys.readouterr().out)["max_abs_diff_vs_fp32_relative"] < 1e-5
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "model.onnx", "model.onnx.data", "onnx.json"]


def test_export_onnx_refuses_bf16_in_one_line(tmp_path, capsys):
    _saved(tmp_path)
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "o"), "--format", "onnx",
                 "--precision", "bf16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "float32" in err[0] and not (tmp_path / "o").exists()


def test_export_takes_an_entropy_coded_compress_output(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from rankwise.compress.artifact import load_compressed, save_compressed
    from rankwise.compress.pipeline import PipelineConfig, run_pipeline

    torch.manual_seed(0)
    model = rankwise.create_model("resnet20", width=4).eval()
    cfg = PipelineConfig(lowrank="channel:ratio:0.5", quantize="int8", entropy_code="zstd")
    result = run_pipeline(model, cfg, (3, 32, 32))
    save_compressed(result, tmp_path / "c", arch="resnet20", arch_kwargs={"width": 4},
                    input_shape=(3, 32, 32))
    assert main(["export", str(tmp_path / "c"), str(tmp_path / "o"), "--format", "onnx",
                 "--check"]) == 0
    assert json.loads(capsys.readouterr().out)["max_abs_diff_vs_fp32_relative"] < 1e-5
    from rankwise.io.onnx_file import OnnxModel

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = load_compressed(tmp_path / "c")(x)  # the dequantized weights, as stored
    got = OnnxModel(tmp_path / "o" / "model.onnx")(x)
    assert float((got - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    # the rankwise-format copy holds plain float32 weights: it loads as a plain model
    assert main(["export", str(tmp_path / "c"), str(tmp_path / "f"), "--precision", "fp32"]) == 0
    with torch.no_grad():
        assert torch.equal(load_compressed(tmp_path / "f")(x), ref)


def test_eval_runs_an_export_as_deployed(tmp_path, capsys):
    from tests.cli.test_train_cli import eval_json, train

    run = tmp_path / "run"
    assert train(run, "--model", "resnet20", "--width", "4", epochs=1) == 0
    source = eval_json(run, capsys)
    assert main(["export", str(run), str(tmp_path / "bf16")]) == 0
    bf16 = eval_json(tmp_path / "bf16", capsys)  # dataset from the run's metadata
    assert bf16["samples"] == source["samples"]
    assert bf16["params"] < source["params"]  # BatchNorm folded into the convs
    assert bf16["loss"] != source["loss"]  # bf16 weights and activations, not the fp32 model
    assert bf16["loss"] == pytest.approx(source["loss"], rel=5e-2)
    if importlib.util.find_spec("onnxruntime") is None:
        return
    assert main(["export", str(run), str(tmp_path / "onnx"), "--format", "onnx"]) == 0
    onnx = eval_json(tmp_path / "onnx", capsys)
    assert onnx["params"] is None and onnx["acc"] == source["acc"]
    assert onnx["loss"] == pytest.approx(source["loss"], rel=1e-4)


def test_profile_times_an_export_as_deployed_and_points_an_onnx_copy_at_its_source(
        tmp_path, capsys):
    _saved(tmp_path)
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "d")]) == 0
    capsys.readouterr()
    argv = ["profile", str(tmp_path / "d"), "--batch-sizes", "1", "--min-run-time", "0.01",
            "--json"]
    assert main(argv) == 0
    prof = json.loads(capsys.readouterr().out)
    assert prof["precision"] == "bf16" and prof["deploy"] is True  # the copy's own settings
    assert main([*argv, "--precision", "fp32"]) == 0  # flags win
    prof = json.loads(capsys.readouterr().out)
    assert prof["precision"] == "fp32" and prof["deploy"] is True
    assert main(["profile", str(tmp_path / "m"), "--no-latency", "--json"]) == 0
    prof = json.loads(capsys.readouterr().out)
    assert prof["precision"] == "fp32" and prof["deploy"] is False  # a plain saved model
    if importlib.util.find_spec("onnxruntime") is None:
        return
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "o"), "--format", "onnx"]) == 0
    capsys.readouterr()
    assert main(["profile", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"rankwise profile {tmp_path / 'm'} --runtime onnxruntime" in err
    assert len(err.strip().splitlines()) == 1
