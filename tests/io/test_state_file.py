"""A bare safetensors state dict loads strictly, or fails in one line naming the file and key."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rankwise.errors import CheckpointError
from rankwise.io.headers import state_mismatch
from rankwise.io.state_file import load_state_file


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def test_loads_every_tensor_and_casts_to_the_model_dtype(tmp_path):
    src = _model().double()
    for p in src.parameters():
        nn.init.normal_(p)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    dst = _model()
    dtypes = {k: v.dtype for k, v in dst.state_dict().items()}
    load_state_file(dst, tmp_path / "w.safetensors", "fix")
    for k, v in dst.state_dict().items():
        assert v.dtype == dtypes[k]
        assert torch.allclose(v.double(), src.state_dict()[k].double(), atol=1e-7)


def test_mismatch_names_the_first_key_of_each_kind_and_the_count():
    exp = {"a": (2,), "b": (3, 3), "c": (1,), "d": (4,)}
    found = {"b": (3, 4), "d": (5,), "x": (1,)}
    assert state_mismatch(exp, exp) == ""
    assert state_mismatch(exp, found) == (
        "missing key 'a' (+1 more); unexpected key 'x'; tensor 'b' has shape (3, 4) in the "
        "file, the model expects (3, 3) (+1 more)")


def test_wrong_keys_or_a_damaged_file_are_one_checkpoint_error(tmp_path):
    state = dict(_model().state_dict())
    state["0.weight"] = torch.zeros(2, 2)
    save_file(state, str(tmp_path / "shape.safetensors"))
    with pytest.raises(CheckpointError, match=r"shape\.safetensors: .*'0\.weight' has shape "
                                              r"\(2, 2\).*; pass the other model"):
        load_state_file(_model(), tmp_path / "shape.safetensors", "pass the other model")
    good = tmp_path / "good.safetensors"
    save_file(dict(_model().state_dict()), str(good))
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:-8])  # header intact, body cut
    with pytest.raises(CheckpointError, match="cut.safetensors is not a valid safetensors"):
        load_state_file(_model(), tmp_path / "cut.safetensors", "fix")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="junk.safetensors is not a valid safetensors"):
        load_state_file(_model(), tmp_path / "junk.safetensors", "fix")
