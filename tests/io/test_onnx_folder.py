"""`io.onnx_folder`: the export folder round-trips its graph and metadata; a folder that is not
one is recognised as such and a damaged `onnx.json` is a one-line error naming the file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rankwise.errors import CheckpointError
from rankwise.io.onnx_folder import (
    GRAPH,
    INFO,
    is_onnx_folder,
    load_onnx_folder,
    read_onnx_info,
    write_onnx_folder,
)

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_folder_round_trips_graph_and_metadata(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(64, 5)).eval()
    assert not is_onnx_folder(tmp_path)
    write_onnx_folder(model, tmp_path, torch.randn(1, 3, 4, 4), "src/run", (3, 4, 4),
                      {"dataset": "toy", "command": "export"})
    assert is_onnx_folder(tmp_path)
    graph, meta = load_onnx_folder(tmp_path)
    assert meta == {"input_shape": [3, 4, 4], "dataset": "toy", "command": "export"}
    assert read_onnx_info(tmp_path)["source"] == "src/run"
    x = torch.randn(3, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), rtol=1e-5, atol=1e-5)
    (tmp_path / GRAPH).unlink()
    assert not is_onnx_folder(tmp_path)  # onnx.json alone is no export


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_damaged_info_is_a_one_line_error_naming_the_file(tmp_path, text) -> None:
    (tmp_path / INFO).write_text(text)
    with pytest.raises(CheckpointError) as e:
        read_onnx_info(tmp_path)
    message = str(e.value)
    assert str(tmp_path / INFO) in message and "rankwise export" in message
    assert "\n" not in message
