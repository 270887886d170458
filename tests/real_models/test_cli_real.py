"""The same real-model matrix through the command line: a model saved from Python (its
architecture a `module:factory` spec) is decomposed losslessly by `rankwise decompose`, and
`rankwise load` / `rankwise profile` read the result."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from rankwise.cli import main
from rankwise.io import load, save
from rankwise.io.onnx_file import first_tensor
from tests.real_models.conftest import MODELS, calibrate_norms, make_low_rank, model_only

SPEC = "tests.real_models.conftest:model_only"
# one format per model keeps the CLI matrix quick; the Python matrix covers every format
FORMAT = {"hf_bert": "svd", "hf_gpt2": "svd", "tv_vit_b_16": "svd", "timm_deit_tiny": "svd",
          "tv_swin_t": "svd"}


def _out(y):
    return y if isinstance(y, torch.Tensor) else y[0]


@pytest.mark.parametrize("name", list(MODELS))
def test_cli_decompose_lossless_then_load(name, tmp_path, capsys):
    torch.manual_seed(0)
    _, ex = MODELS[name]()
    model = model_only(name)
    make_low_rank(model)
    calibrate_norms(model, ex)
    model.eval()
    tokens = not ex[0].is_floating_point()
    shape = (int(ex[0].shape[-1]),) if tokens else tuple(int(s) for s in ex[0].shape[1:])
    save(model, tmp_path / "dense", arch=SPEC, arch_kwargs={"name": name}, input_shape=shape)
    fmt = FORMAT.get(name, "tucker2")
    argv = ["decompose", "--checkpoint", str(tmp_path / "dense"), "--rank", "energy:1.0",
            "--out", str(tmp_path / "small"), "--json"]
    argv += ["--format", "none", "--linear-format", fmt] if fmt == "svd" else ["--format", fmt]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["factorized"] > 0  # something was replaced, losslessly
    small = load(tmp_path / "small").eval()
    with torch.no_grad():
        y, got = _out(model(*ex)), _out(small(*ex))
    assert float((got - y).abs().max()) <= 5e-5 * float(y.abs().max())
    assert main(["load", str(tmp_path / "small")]) == 0
    capsys.readouterr()
    if importlib.util.find_spec("onnxruntime") is None:
        return
    # the ONNX copy a user deploys: traced on the saved batch-1 example, run at batch 3
    assert main(["export", str(tmp_path / "small"), str(tmp_path / "onnx"), "--format", "onnx",
                 "--check"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["max_abs_diff_vs_fp32_relative"] < 1e-4
    from rankwise.io.onnx_file import OnnxModel

    x3 = torch.cat([ex[0], ex[0].flip(-1), ex[0]])
    with torch.no_grad():
        ref = first_tensor(small(x3))
    got = OnnxModel(tmp_path / "onnx" / "model.onnx")(x3)
    assert got.shape == ref.shape and float((got - ref).abs().max()) <= 1e-4 * float(
        ref.abs().max()), name
