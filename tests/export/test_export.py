"""Deployment paths of a factorized model: torch.compile (one graph), torch.export, TorchScript
trace and script, ONNX (dynamo exporter) run in onnxruntime, the state-dict round trip and
`to_dense` back into the original architecture.

One small model holds every format (tucker2, cp, channel, spatial, tt, svd); each path is run
once on it. The torchvision / timm / Hugging Face matrix runs in `rankwise.bench.real_models`.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rankwise.layers import FactorizedLayer, layer_from_spec
from rankwise.layers.channel_conv import ChannelLowRankConv2d
from rankwise.layers.cp_conv import CPConv2d
from rankwise.layers.lowrank_linear import LowRankLinear
from rankwise.layers.spatial_conv import SpatialLowRankConv2d
from rankwise.layers.tt_linear import TTLinear
from rankwise.layers.tucker2_conv import Tucker2Conv2d
from tests.export.compat import require

TOL = {"rtol": 1e-5, "atol": 1e-6}
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def dense_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),                 # 0: tucker2
        nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),       # 2: cp (grouped)
        nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU(),      # 4: channel
        nn.Conv2d(12, 12, (3, 1), padding=(1, 0)), nn.ReLU(),     # 6: spatial
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(48, 24), nn.ReLU(),                             # 10: tt
        nn.Linear(24, 5),                                         # 12: svd
    )


FORMATS = {"0": (Tucker2Conv2d, (4, 2)), "2": (CPConv2d, 3), "4": (ChannelLowRankConv2d, 4),
           "6": (SpatialLowRankConv2d, 3), "10": (TTLinear, (2, 2)), "12": (LowRankLinear, 3)}


def factorize(dense: nn.Sequential) -> nn.Sequential:
    model = copy.deepcopy(dense)
    for name, (cls, rank) in FORMATS.items():
        model[int(name)] = cls.from_dense(dense[int(name)], rank)
    return model.eval()


@pytest.fixture(scope="module")
def nets() -> tuple[nn.Sequential, nn.Sequential, torch.Tensor]:
    torch.manual_seed(0)
    dense = dense_net().eval()
    return dense, factorize(dense), torch.randn(2, 3, 8, 8)


def test_every_format_is_present(nets):
    _, model, x = nets
    assert {type(m).format for m in model if isinstance(m, FactorizedLayer)} == {
        "tucker2", "cp", "channel", "spatial", "tt", "svd"}
    assert model(x).shape == (2, 5)


def test_torchscript_script_and_trace(nets):
    _, model, x = nets
    ref = model(x)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), ref, **TOL)
    torch.testing.assert_close(scripted(x[:1]), ref[:1], **TOL)  # no shape baked in
    traced = torch.jit.trace(model, (x,))
    torch.testing.assert_close(traced(x), ref, **TOL)


def test_tt_linear_scripts_on_sequences():
    torch.manual_seed(0)
    layer = TTLinear.from_dense(nn.Linear(12, 8, bias=False), (2, 2)).eval()
    x = torch.randn(2, 3, 12)  # (B, T, in): leading dims are kept
    torch.testing.assert_close(torch.jit.script(layer)(x), layer(x), **TOL)


@pytest.fixture(scope="module")
def exported(nets) -> torch.export.ExportedProgram:
    _, model, x = nets
    return torch.export.export(model, (x,))


def test_torch_export_matches_eager(nets, exported):
    _, model, x = nets
    torch.testing.assert_close(exported.module()(x), model(x), **TOL)


def test_torch_compile_single_graph(nets):
    _, model, x = nets
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # a graph break = error
    torch.testing.assert_close(compiled(x), model(x), **TOL)
    torch._dynamo.reset()


def test_onnx_dynamo_export_runs_in_onnxruntime(nets, exported, tmp_path):
    require("onnxscript")
    ort = require("onnxruntime")
    _, model, x = nets
    path = tmp_path / "model.onnx"
    torch.onnx.export(exported, (x,), str(path), dynamo=True, verbose=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), model(x), **TOL)


def test_rankwise_onnx_export_keeps_every_format_at_any_batch(nets, tmp_path):
    require("onnxscript")
    require("onnxruntime")
    from rankwise.io.onnx_file import OnnxModel, export_onnx

    _, model, x = nets
    runner = OnnxModel(export_onnx(model, tmp_path / "m.onnx", x))
    for batch in (1, 5):
        xb = torch.randn(batch, *x.shape[1:])
        torch.testing.assert_close(runner(xb), model(xb), **TOL)


def test_state_dict_round_trip_from_specs(nets):
    _, model, x = nets
    fresh = dense_net()
    for name, layer in model.named_children():
        if isinstance(layer, FactorizedLayer):
            fresh[int(name)] = layer_from_spec(layer.spec())
    fresh.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(fresh.eval()(x), model(x), rtol=0, atol=0)


def test_to_dense_loads_strictly_into_the_original_architecture(nets):
    dense, model, x = nets
    back = copy.deepcopy(model)
    for name, layer in model.named_children():
        if isinstance(layer, FactorizedLayer):
            back[int(name)] = layer.to_dense()
    target = dense_net()
    target.load_state_dict(back.state_dict(), strict=True)  # same keys and shapes as the original
    torch.testing.assert_close(target.eval()(x), model(x), **TOL)
    assert target.state_dict().keys() == dense.state_dict().keys()
