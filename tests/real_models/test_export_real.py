"""Deployment paths of the real architectures after compression: each model of the matrix
(small configs, random weights) is factorized at `budget:params=0.5` (`RANKS` where that leaves
the layers of interest dense) and run through the five paths of
`rankwise.bench.real_models.export_paths`.

- `torch.compile` with `fullgraph=True` (a graph break is an error), backend `aot_eager`: it
  proves whole-graph capture and AOT tracing; inductor code generation runs in the benchmark;
- `torch.export`, `torch.jit.trace`, ONNX (dynamo exporter) run in onnxruntime: each matches
  eager to `REL_TOL` of the output's largest magnitude;
- `torch.jit.script`: matches eager, or (only where `SCRIPT_REFUSES` says so) fails with an error
  naming the class that cannot be scripted.

The formats rotate over the models so that every conv format (tucker2, cp, channel, spatial) and
both linear formats (svd, tt) are exported on some real architecture.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rankwise.bench.real_models_export import PATHS, export_paths
from rankwise.layers import FactorizedLayer
from rankwise.surgery.decompose import decompose
from tests.export.compat import require
from tests.real_models.conftest import MODELS, calibrate_norms

RANK = "budget:params=0.5"
# the tiny ViT meets the budget with its patch conv alone: a fixed ratio factorizes attention too
RANKS = {"tv_vit_b_16": "ratio:0.25"}
# model -> (conv format, linear format); tucker2 / spatial fall back to channel on 1×1 convs
FORMATS: dict[str, tuple[str, str]] = {
    "tv_resnet50": ("tucker2", "svd"),
    "tv_mobilenet_v3_small": ("channel", "tt"),
    "tv_efficientnet_b0": ("spatial", "svd"),
    "tv_convnext_tiny": ("cp", "tt"),
    "tv_vit_b_16": ("tucker2", "svd"),
    "tv_swin_t": ("tucker2", "svd"),
    "timm_tf_efficientnet_b0": ("cp", "svd"),
    "timm_regnetx_002": ("tucker2", "tt"),
    "timm_deit_tiny": ("tucker2", "tt"),
    "hf_bert": ("tucker2", "tt"),
    "hf_gpt2": ("tucker2", "svd"),
}
# model -> text of the error (naming the class) where `torch.jit.script` refuses the model:
# Hugging Face models are not scriptable, dense or factorized (TorchScript cannot read their
# config's source). Every other model must script (timm's ConvNormAct scripts its
# `in_channels` property through the factorized conv; ViT scripts the factorized attention).
SCRIPT_REFUSES: dict[str, str] = {
    "hf_bert": "BertConfig",
    "hf_gpt2": "GPT2Config",
}
REL_TOL = 1e-4
FAST_CP = {"cp": {"n_iter_max": 2}}
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::UserWarning")


def _first(y: Any) -> torch.Tensor:
    if isinstance(y, torch.Tensor):
        return y
    return y.logits if hasattr(y, "logits") else y[0]


def test_formats_cover_every_format_and_model():
    assert set(FORMATS) == set(MODELS)
    assert {c for c, _ in FORMATS.values()} >= {"tucker2", "cp", "channel", "spatial"}
    assert {lin for _, lin in FORMATS.values()} == {"svd", "tt"}


@pytest.mark.parametrize("name", list(MODELS))
def test_compressed_model_runs_through_five_paths(name, tmp_path):
    require("onnxscript")
    require("onnxruntime")
    torch.manual_seed(0)
    model, ex = MODELS[name]()
    calibrate_norms(model, ex)
    conv, linear = FORMATS[name]
    small, rep = decompose(model.eval(), format=conv, linear_format=linear,
                           rank=RANKS.get(name, RANK), example_inputs=ex,
                           format_options=FAST_CP)
    small.eval()
    assert rep.totals["params_ratio"] <= 0.5 + 1e-9, (name, rep.totals)
    assert any(isinstance(m, FactorizedLayer) for m in small.modules()), name
    inputs = {"input_ids": ex[0]} if name.startswith("hf_") else ex[0]
    with torch.no_grad():
        scale = float(_first(small(*ex)).abs().max())
    assert scale > 0, name

    cells = export_paths(small, inputs, compile_backend="aot_eager")
    assert set(cells) == set(PATHS)
    for path, cell in cells.items():
        if path == "script" and not cell["ok"] and name in SCRIPT_REFUSES:
            assert SCRIPT_REFUSES[name] in cell["error"], (name, cell["error"])
            continue
        assert cell["ok"], (name, path, cell.get("error"))
        assert cell["max_abs_err"] <= REL_TOL * scale, (name, path, cell["max_abs_err"], scale)
