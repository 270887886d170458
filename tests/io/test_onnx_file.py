"""`io.onnx_file`: factorized models exported to ONNX run in ONNX Runtime with the outputs of
eager float32 at any batch size; missing packages and unreadable graphs are one-line errors."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch import nn

import rankwise
from rankwise.errors import ConfigError
from rankwise.io.onnx_file import OnnxModel, export_onnx, onnx_bytes

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _factorized() -> nn.Module:
    """A small CNN whose convs are channel / spatial / Tucker-2 factorized (strided, grouped
    and padded convs included) and whose classifier is a low-rank linear."""
    torch.manual_seed(0)
    dense = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=2), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    for bn in (dense[1], dense[4]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    formats = {"3": "channel", "6": "spatial", "8": "tucker2", "12": "svd"}  # by module name
    for name, fmt in formats.items():
        dense, _ = rankwise.decompose(dense, format=fmt, rank="fixed:4", include=[name],
                                      example_inputs=(torch.zeros(1, 3, 16, 16),))
    return dense.eval()


def test_factorized_model_runs_in_onnx_runtime_like_eager_at_every_batch(tmp_path) -> None:
    model = _factorized()
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"ChannelLowRankConv2d", "SpatialLowRankConv2d", "Tucker2Conv2d",
            "LowRankLinear"} <= kinds
    # a batch-1 example still leaves the batch dynamic (traced on two rows: torch.export
    # specializes a size-1 dimension)
    path = export_onnx(model, tmp_path / "m.onnx", torch.zeros(1, 3, 16, 16))
    assert path.is_file() and not list(tmp_path.glob("*.tmp*"))
    runner = OnnxModel(path, threads=1)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            ref = model(x)
        got = runner(x)
        assert got.shape == ref.shape
        assert float((got - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_weights_past_the_protobuf_limit_go_to_a_data_file_beside_the_graph(
        tmp_path, monkeypatch) -> None:
    import rankwise.io.onnx_file as onnx_file

    model = _factorized()
    monkeypatch.setattr(onnx_file, "PROTO_LIMIT", 1024)  # this model's weights are larger
    with pytest.raises(ConfigError, match="keeps the weights in a .data file"):
        onnx_bytes(model, torch.zeros(1, 3, 16, 16))
    path = export_onnx(model, tmp_path / "big" / "m.onnx", torch.zeros(1, 3, 16, 16))
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert (path.parent / "m.onnx.data").stat().st_size > 0  # large tensors moved out
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    got = OnnxModel(path)(x)
    assert float((got - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_keyword_inputs_keep_their_names() -> None:
    class Keyed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.fc(pixel_values).relu()

    model = Keyed().eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = onnx_bytes(model, {"pixel_values": torch.zeros(1, 6)})
    assert not [w for w in caught if "training mode" in str(w.message)]  # exported in eval
    runner = OnnxModel(graph)
    assert runner.input_names == ["pixel_values"]
    x = torch.randn(4, 6)
    with torch.no_grad():
        assert torch.allclose(runner(pixel_values=x), model(x), atol=1e-6)
    with pytest.raises(ConfigError, match="pixel_values"):
        runner()


def test_outputs_the_exporter_cannot_flatten_are_reduced_to_the_first_tensor() -> None:
    class Cache:  # like Hugging Face's DynamicCache: an object torch.export cannot flatten
        def __init__(self, t: torch.Tensor) -> None:
            self.t = t

    class WithCache(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 2)

        def forward(self, input_ids: torch.Tensor) -> dict[str, object]:
            h = self.fc(input_ids.float())
            return {"logits": h, "past_key_values": Cache(h)}

    model = WithCache().eval()
    runner = OnnxModel(onnx_bytes(model, {"input_ids": torch.ones(1, 5, dtype=torch.long)}))
    ids = torch.randint(0, 9, (3, 5))
    with torch.no_grad():
        assert torch.allclose(runner(input_ids=ids), model(ids)["logits"], atol=1e-6)


def test_export_failures_name_the_exporters_reason(monkeypatch) -> None:
    def fail(*a, **k):
        raise RuntimeError("Failed to export the model with torch.export. Next steps:\n- a\n\n"
                           "## Exception summary\n\n<class 'UserError'>: Invalid ranges [2:1]\n")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(ConfigError, match=r"ONNX export of Linear failed: <class 'UserError'>: "
                                          r"Invalid ranges \[2:1\]$"):
        onnx_bytes(nn.Linear(2, 2), torch.zeros(1, 2))


def test_missing_onnx_runtime_and_unreadable_graphs_are_config_errors(monkeypatch,
                                                                      tmp_path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(ConfigError, match="bad.onnx.*export it again"):
        OnnxModel(bad)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"pip install 'rankwise\[export\]'"):
        OnnxModel(bad)
