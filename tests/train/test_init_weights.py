"""`--init`: a run starts from a trained model's weights (the TRP paper's fine-tuning recipe)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import rankwise
from rankwise.errors import CheckpointError, ConfigError
from rankwise.models import create_model
from rankwise.train.config import DataConfig, ModelConfig, TrainConfig
from rankwise.train.init_weights import load_init_weights

DATA = DataConfig("synthetic", limit_train=64, limit_test=32)


def _run(out, epochs=1, init=None, method="dense", lr=0.05, resume=False):
    return rankwise.run(rankwise.RunConfig(
        ModelConfig("mlp", init=None if init is None else str(init)), DATA,
        TrainConfig(epochs=epochs, batch_size=32, lr=lr, quiet=True, num_threads=1),
        method=method, out=out, resume=resume))


def test_a_run_starts_from_the_given_weights_and_records_them(tmp_path):
    _run(tmp_path / "a", epochs=2)
    trained = load_file(str(tmp_path / "a" / "model.safetensors"))
    summary = _run(tmp_path / "b", init=tmp_path / "a", lr=0.0)  # lr 0: weights unchanged
    after = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(trained[k], after[k]) for k in trained if "running" not in k)
    fresh = _run(tmp_path / "c", lr=0.0)
    assert summary["test_loss"] != fresh["test_loss"]
    meta = json.loads((tmp_path / "b" / "config.json").read_text())
    assert meta["model"]["init"]["path"] == str(tmp_path / "a")
    assert len(meta["model"]["init"]["sha256"]) == 64
    _run(tmp_path / "b", epochs=2, init=tmp_path / "a", lr=0.0, resume=True)  # same init: ok
    save_file({k: v + 1 for k, v in trained.items()}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ConfigError, match="differs"):
        _run(tmp_path / "b", epochs=3, init=tmp_path / "other.safetensors", lr=0.0, resume=True)


def test_init_refuses_what_does_not_fit(tmp_path):
    model = create_model("mlp", num_classes=10, in_channels=3)
    with pytest.raises(CheckpointError, match="model.json"):
        load_init_weights(model, tmp_path)
    (tmp_path / "w.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="pickled"):
        load_init_weights(model, tmp_path / "w.pt")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    name = next(iter(state))
    state[name] = torch.zeros(3, 3)
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    expected = f"unexpected key 'extra.weight'; tensor {name!r} has shape \\(3, 3\\)"
    with pytest.raises(CheckpointError, match=expected):
        load_init_weights(model, tmp_path / "bad.safetensors")
    with pytest.raises(ConfigError, match="builds its factorized layers"):
        _run(tmp_path / "e", init=tmp_path / "bad.safetensors", method="elrt")


def test_init_weights_that_changed_after_the_digest_are_refused(tmp_path):
    from rankwise.io.model_file import file_sha256

    model = create_model("mlp", num_classes=10, in_channels=3)
    file = tmp_path / "w.safetensors"
    save_file(dict(model.state_dict()), str(file))
    digest = file_sha256(file)
    load_init_weights(model, file, digest)  # unchanged: loads
    save_file({k: v + 1 for k, v in model.state_dict().items()}, str(file))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"changed after its sha256 .* was recorded; "
                                              r"--init changed after the run started"):
        load_init_weights(model, file, digest)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
