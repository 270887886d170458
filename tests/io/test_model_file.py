"""save()/load(): exact round trips per format, strictness, corruption, no unpickling."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import rankwise.models
from rankwise import io
from rankwise.errors import CheckpointError
from rankwise.layers import FORMATS, FactorizedLayer


class Net(nn.Module):
    """conv (8→16, 3×3) + BN + linear (16→16) + head; input (3, 8, 8)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.conv = nn.Conv2d(width, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(torch.relu(self.stem(x)))))
        return self.head(torch.relu(self.fc(x.mean((2, 3)))))


RANKS = {"channel": 4, "spatial": 4, "tucker2": (4, 3), "cp": 4, "svd": 4, "tt": None}


def factorized(fmt: str, seed: int = 0) -> nn.Module:
    """A Net with `conv` (conv formats) or `fc` (linear formats) replaced by `fmt`."""
    torch.manual_seed(seed)
    model = Net()
    model.bn.running_mean.uniform_(-1, 1)  # buffers must round-trip too
    cls = FORMATS[fmt]
    name = "fc" if cls.dense_type is nn.Linear else "conv"
    dense = getattr(model, name)
    rank = RANKS[fmt]
    if rank is None:  # tt: half of each internal limit
        rank = tuple(max(1, r // 2) for r in cls.max_rank(cls_spec(dense)))
    setattr(model, name, cls.from_dense(dense, rank))
    return model.eval()


def cls_spec(layer: nn.Module):
    from rankwise.layers.base import dense_spec_of

    return dense_spec_of(layer)


@pytest.fixture
def fake_zoo(monkeypatch):
    """`create_model("net", width=)` → Net, for the arch path (independent of the real zoo)."""
    def create_model(name: str, **kw):
        if name != "net":
            raise KeyError(name)
        return Net(**kw)

    monkeypatch.setattr(rankwise.models, "create_model", create_model, raising=False)
    monkeypatch.setattr(rankwise.models, "default_input_shape", lambda name: (3, 8, 8),
                        raising=False)
    registry = getattr(rankwise.models, "registry", None)  # where name resolution looks it up
    if registry is not None:
        monkeypatch.setattr(registry, "create_model", create_model, raising=False)
        monkeypatch.setattr(registry, "default_input_shape", lambda name: (3, 8, 8),
                            raising=False)


@pytest.mark.parametrize("fmt", sorted(RANKS))
def test_round_trip_identical_outputs(tmp_path, fmt, fake_zoo):
    model = factorized(fmt)
    x = torch.randn(2, 3, 8, 8)
    io.save(model, tmp_path / "a", arch="net", arch_kwargs={"width": 8}, input_shape=(3, 8, 8),
            meta={"note": fmt})
    config = json.loads((tmp_path / "a" / "model.json").read_text())
    assert list(config["factorized"]) == ["fc" if FORMATS[fmt].dense_type is nn.Linear
                                          else "conv"]
    assert config["input_shape"] == [3, 8, 8] and config["meta"] == {"note": fmt}
    for loaded in (io.load(tmp_path / "a"), io.load(tmp_path / "a", model=Net())):
        assert type(loaded.get_submodule(next(iter(config["factorized"])))) is FORMATS[fmt]
        assert torch.equal(loaded(x), model(x))
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k
    assert io.saved_input_shape(tmp_path / "a") == (3, 8, 8)


def test_dense_model_and_user_base_without_arch(tmp_path):
    model = Net().eval()
    io.save(model, tmp_path)
    with pytest.raises(CheckpointError, match="model="):
        io.load(tmp_path)
    loaded = io.load(tmp_path, model=Net())
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(loaded(x), model(x))
    assert not any(isinstance(m, FactorizedLayer) for m in loaded.modules())


def test_shared_tensors_are_stored_once(tmp_path):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    model = Tied()
    io.save(model, tmp_path)
    config = json.loads((tmp_path / "model.json").read_text())
    assert config["aliases"] == {"b.weight": "a.weight"}
    loaded = io.load(tmp_path, model=Tied())
    x = torch.randn(2, 4)
    assert torch.equal(loaded(x), model(x)) and loaded.a.weight is loaded.b.weight


def test_never_unpickles(tmp_path, monkeypatch):
    model = factorized("tucker2")
    io.save(model, tmp_path)

    def boom(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(torch, "load", boom)
    loaded = io.load(tmp_path, model=Net())
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(loaded(x), model(x))


@pytest.fixture
def saved(tmp_path) -> Path:
    io.save(factorized("channel"), tmp_path / "m", input_shape=(3, 8, 8))
    return tmp_path / "m"


def test_corrupt_weights(saved):
    f = saved / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the tensor data
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*save the model again"):
        io.load(saved, model=Net())


def test_corrupt_header_without_checksum(saved):
    cfg = json.loads((saved / "model.json").read_text())
    cfg.pop("safetensors_sha256")
    (saved / "model.json").write_text(json.dumps(cfg))
    f = saved / "model.safetensors"
    f.write_bytes(b"\xff" * 16 + f.read_bytes()[16:])
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        io.load(saved, model=Net())


def test_truncated_weights(saved):
    f = saved / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        io.load(saved, model=Net())


@pytest.mark.parametrize("text", ['{"rankwise_format": 1, "factor', "[1, 2]", '{"a": 1}',
                                  '{"rankwise_format": 1, "factorized": [1]}', "\udcff"])
def test_wrong_or_truncated_json(saved, text):
    (saved / "model.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match="model.json"):
        io.load(saved, model=Net())


def test_missing_files(saved, tmp_path):
    with pytest.raises(CheckpointError, match="model.json"):
        io.load(tmp_path / "nowhere", model=Net())
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        io.load(saved, model=Net())


def test_mismatched_architecture(saved):
    with pytest.raises(CheckpointError, match="'conv' was saved as a factorization"):
        io.load(saved, model=Net(width=6))  # conv dense spec differs: 6 → 16 in channels
    other = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match="'conv'.*no such module"):
        io.load(saved, model=other)
    extra = Net()
    extra.extra = nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="missing key 'extra.weight'"):
        io.load(saved, model=extra)


def test_unknown_format_in_spec(saved):
    cfg = json.loads((saved / "model.json").read_text())
    cfg["factorized"]["conv"]["format"] = "hologram"
    (saved / "model.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="conv"):
        io.load(saved, model=Net())


def test_unknown_arch(saved, fake_zoo):
    cfg = json.loads((saved / "model.json").read_text())
    cfg["arch"] = "nope"
    (saved / "model.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="nope"):
        io.load(saved)


def test_shape_mismatch_in_dense_layer(tmp_path):
    io.save(Net(), tmp_path)
    other = Net()
    other.head = nn.Linear(16, 5)
    with pytest.raises(CheckpointError, match=r"'head\.weight' has shape \(4, 16\).*\(5, 16\)"):
        io.load(tmp_path, model=other)


def test_zoo_round_trip_when_available(tmp_path):
    if not hasattr(rankwise.models, "create_model"):
        pytest.skip("rankwise.models.create_model not written yet")
    from rankwise.surgery.decompose import decompose
    from rankwise.surgery.rank import Ratio

    torch.manual_seed(0)
    model = rankwise.models.create_model("resnet20", width=8).eval()
    new, _ = decompose(model, "tucker2", Ratio(0.5), input_shape=(3, 32, 32))
    io.save(new, tmp_path, arch="resnet20", arch_kwargs={"width": 8}, input_shape=(3, 32, 32))
    loaded = io.load(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), new(x))
    with pytest.raises(CheckpointError):  # wrong width: the saved tensors do not fit
        cfg = json.loads((tmp_path / "model.json").read_text())
        cfg["arch_kwargs"] = {"width": 16}
        (tmp_path / "model.json").write_text(json.dumps(cfg))
        io.load(tmp_path)


# ------------------------------------------------ tampering, meta device, strict JSON (faults)


@pytest.fixture
def allocations(monkeypatch):
    """Element counts of every conv/linear weight initialized off the meta device."""
    seen: list[int] = []
    for cls in (nn.Conv2d, nn.Linear):
        real = cls.reset_parameters

        def record(self, _real=real):
            if not self.weight.is_meta:
                seen.append(self.weight.numel())
            return _real(self)

        monkeypatch.setattr(cls, "reset_parameters", record)
    return seen


def test_edited_model_json_is_refused_before_allocating(tmp_path, fake_zoo, allocations):
    io.save(factorized("channel"), tmp_path, arch="net", arch_kwargs={"width": 8})
    cfg = json.loads((tmp_path / "model.json").read_text())
    cfg["arch_kwargs"]["width"] = 100_000  # a 1 KB edit: 15 M conv weights (60 MB) if built
    (tmp_path / "model.json").write_text(json.dumps(cfg))
    allocations.clear()
    with pytest.raises(CheckpointError, match="model.json|shape"):
        io.load(tmp_path)
    assert max(allocations, default=0) < 10_000


def test_edited_spec_shape_is_checked_against_the_header(tmp_path, fake_zoo, allocations):
    io.save(factorized("tucker2"), tmp_path, arch="net", arch_kwargs={"width": 8})
    cfg = json.loads((tmp_path / "model.json").read_text())
    cfg["factorized"]["conv"]["rank"] = [8, 8]  # saved (4, 3): tensors no longer fit
    (tmp_path / "model.json").write_text(json.dumps(cfg))
    allocations.clear()
    with pytest.raises(CheckpointError, match=r"has shape .*expects"):
        io.load(tmp_path)
    assert allocations == []  # nothing was built for real before the check


def test_saving_a_meta_model_is_refused_in_one_line(tmp_path):
    with torch.device("meta"):
        model = Net()
    with pytest.raises(CheckpointError, match="meta device"):
        io.save(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_model_json_stays_strict_json_with_nan_meta(tmp_path):
    io.save(Net(), tmp_path, meta={"acc": float("nan"), "loss": [float("inf"), 1.0]})

    def refuse(token):
        raise AssertionError(f"invalid JSON token {token}")

    cfg = json.loads((tmp_path / "model.json").read_text(), parse_constant=refuse)
    assert cfg["meta"] == {"acc": None, "loss": [None, 1.0]}


@pytest.mark.parametrize("shape", [[3, 100_000, 100_000], [0, 8], ["3"], [3, 8, 8, 8, 8]])
def test_absurd_input_shape_is_refused(saved, shape):
    cfg = json.loads((saved / "model.json").read_text())
    cfg["input_shape"] = shape
    (saved / "model.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="input_shape"):
        io.saved_input_shape(saved)
