"""build_model(): zoo names, tv:/timm:/hf: specs and module:factory; the spec survives save/load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rankwise import io
from rankwise.errors import CheckpointError, ConfigError
from rankwise.models import build_model, recorded_arch
from rankwise.models.resolve import default_input_shape, example_inputs, split_spec
from tests.export.compat import require


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_split_spec_kinds_and_errors():
    assert split_spec("resnet20") == ("zoo", "resnet20")
    assert split_spec("tv:resnet50") == ("tv", "resnet50")
    assert split_spec("hf:./some/dir") == ("hf", "./some/dir")
    assert split_spec("my.pkg:make") == ("entry", "my.pkg:make")
    for bad in ("tv:", "1bad:make", ":x"):
        with pytest.raises(ConfigError, match="model spec"):
            split_spec(bad)


def test_zoo_seeded_and_recorded():
    state = torch.random.get_rng_state()
    a = build_model("resnet20", seed=3, num_classes=5)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    b = build_model("resnet20", seed=3, num_classes=5)
    assert _same_state(a, b) and not _same_state(a, build_model("resnet20", seed=4,
                                                                num_classes=5))
    assert recorded_arch(a) == ("resnet20", {"num_classes": 5})
    assert a(torch.zeros(1, 3, 32, 32)).shape == (1, 5)


def test_entry_point_saves_and_loads_without_naming_it(tmp_path):
    model = build_model("torch.nn:Linear", seed=0, in_features=6, out_features=3)
    assert isinstance(model, nn.Linear) and model.out_features == 3
    io.save(model, tmp_path / "m")
    back = io.load(tmp_path / "m")
    assert type(back) is nn.Linear and _same_state(model, back)
    with pytest.raises(ConfigError, match="cannot import no_such_pkg"):
        build_model("no_such_pkg.sub:make")
    with pytest.raises(ConfigError, match="not an nn.Module"):
        build_model("torch:zeros", size=(2,))


def test_unrecorded_model_still_needs_arch(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2))
    io.save(model, tmp_path / "m")
    with pytest.raises(CheckpointError, match="no 'arch'"):
        io.load(tmp_path / "m")


def test_torchvision_model_round_trip(tmp_path):
    require("torchvision")
    model = build_model("tv:mobilenet_v3_small", seed=0, num_classes=7).eval()
    x = torch.randn(1, 3, 64, 64)
    io.save(model, tmp_path / "tv")
    back = io.load(tmp_path / "tv")
    torch.testing.assert_close(back(x), model(x))
    assert io.saved_input_shape(tmp_path / "tv") == (3, 224, 224)
    with pytest.raises(ConfigError, match="tv:no_such_net"):
        build_model("tv:no_such_net")


def test_timm_model_and_default_shape():
    require("timm")
    model = build_model("timm:test_vit", seed=0, num_classes=4).eval()
    shape = default_input_shape("timm:test_vit", model)
    assert shape == (3, 160, 160)
    assert model(torch.zeros(1, *shape)).shape == (1, 4)
    with pytest.raises(ConfigError, match="timm:no_such_net"):
        build_model("timm:no_such_net")


@pytest.fixture
def gpt2_folder(tmp_path):
    transformers = require("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32,
                                  architectures=["GPT2LMHeadModel"])
    folder = tmp_path / "gpt2-tiny"
    cfg.save_pretrained(folder)
    return folder


def test_hf_from_local_config_and_overrides(gpt2_folder, tmp_path):
    model = build_model(f"hf:{gpt2_folder}", seed=0, n_layer=2).eval()
    assert type(model).__name__ == "GPT2LMHeadModel" and len(model.transformer.h) == 2
    inputs = example_inputs(model, default_input_shape(f"hf:{gpt2_folder}", model))
    assert inputs["input_ids"].shape == (1, 16)
    logits = model(**inputs).logits
    io.save(model, tmp_path / "saved")
    back = io.load(tmp_path / "saved")
    torch.testing.assert_close(back(**inputs).logits, logits)
    base = build_model(f"hf:{gpt2_folder}", task="base")
    assert type(base).__name__ == "GPT2Model"


def test_hf_local_weights_are_loaded(gpt2_folder, tmp_path):
    model = build_model(f"hf:{gpt2_folder}", seed=1)
    model.save_pretrained(tmp_path / "with-weights")
    again = build_model(f"hf:{tmp_path / 'with-weights'}", seed=2)
    assert _same_state(model, again)
    with pytest.raises(ConfigError, match="no config.json"):
        build_model(f"hf:{tmp_path}")


def test_cli_profile_and_load_take_specs(tmp_path, capsys):
    import json

    from rankwise.cli import main

    argv = ["profile", "torch.nn:Linear", "--model-arg", "in_features=4", "--model-arg",
            "out_features=2", "--input-shape", "3,4", "--no-latency", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["macs"] == 3 * 4 * 2  # 3 tokens × 4 × 2
    model = build_model("torch.nn:Linear", in_features=4, out_features=2)
    io.save(model, tmp_path / "saved", input_shape=(3, 4))  # saved from Python, no arch given
    assert main(["load", str(tmp_path / "saved"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["arch"] == "torch.nn:Linear" and summary["output_shape"] == [1, 3, 2]


def test_cli_load_hf_model_uses_token_inputs(gpt2_folder, tmp_path, capsys):
    import json

    from rankwise.cli import main

    io.save(build_model(f"hf:{gpt2_folder}", seed=0), tmp_path / "gpt")
    assert main(["load", str(tmp_path / "gpt"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["input_shape"] == [16] and summary["macs"] > 0
