"""profile_model(): params / MACs by hand, factorized layers, latency fields, baseline ratios."""

from __future__ import annotations

import io as _io
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from torch import nn

from rankwise.analysis.profile import profile_model
from rankwise.errors import ConfigError
from rankwise.layers import FactorizedLayer
from rankwise.surgery.decompose import decompose
from rankwise.surgery.rank import Ratio


def small_cnn() -> nn.Module:
    # input (3, 8, 8)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),             # out 8×8×8
        nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),  # out 16×4×4
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 10),
    )


def test_hand_counts_small_cnn():
    prof = profile_model(small_cnn(), (3, 8, 8), latency=False)
    conv0_macs = 8 * 8 * 8 * 3 * 3 * 3           # out H·W·n · c·kh·kw = 13,824
    conv3_macs = 4 * 4 * 16 * 8 * 3 * 3          # 18,432
    fc_macs = 16 * 10
    assert prof.macs == conv0_macs + conv3_macs + fc_macs
    conv0_params = 8 * 3 * 9 + 8
    conv3_params = 16 * 8 * 9
    fc_params = 16 * 10 + 10
    bn_params = 2 * 8
    assert prof.params == conv0_params + conv3_params + fc_params + bn_params
    rows = {r.name: r for r in prof.rows}
    assert rows["0"].macs == conv0_macs and rows["0"].params == conv0_params
    assert rows["3"].shape == (16, 8, 3, 3) and rows["3"].format is None
    assert rows["(other)"].params == bn_params and "BatchNorm2d" in rows["(other)"].type
    assert sum(r.params_share for r in prof.rows) == pytest.approx(1.0)
    assert sum(r.macs_share for r in prof.rows) == pytest.approx(1.0)


def test_linear_on_sequence_counts_tokens():
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4))
    prof = profile_model(model, (5, 6), latency=False)  # 5 tokens per sample
    assert prof.macs == 5 * 6 * 12 + 5 * 12 * 4


@pytest.mark.parametrize("fmt", ["channel", "spatial", "tucker2", "cp"])
def test_factorized_macs_equal_sum_of_layer_macs(fmt):
    torch.manual_seed(0)
    model = small_cnn()
    new, _ = decompose(model, fmt, Ratio(0.5), input_shape=(3, 8, 8))
    prof = profile_model(new, (3, 8, 8), latency=False)
    # input sizes of the two convs are known: 8×8 and 8×8 (the second one has stride 2)
    expected = 0
    for name, hw in (("0", (8, 8)), ("3", (8, 8))):
        layer = new.get_submodule(name)
        if isinstance(layer, FactorizedLayer):
            expected += layer.macs(hw)
            assert {r.name: r for r in prof.rows}[name].format == layer.format
        else:
            expected += {"0": 8 * 8 * 8 * 27, "3": 4 * 4 * 16 * 72}[name]
    fc = new.get_submodule("7")
    expected += fc.macs() if isinstance(fc, FactorizedLayer) else 160
    assert prof.macs == expected
    assert prof.params == sum(p.numel() for p in new.parameters())


def test_latency_fields_eval_mode_restored_and_baseline():
    model = small_cnn().train()
    new, _ = decompose(model, "channel", Ratio(0.25), input_shape=(3, 8, 8))
    prof = profile_model(new, (3, 8, 8), baseline=model, batch_sizes=(1, 2), min_run_time=0.01)
    assert set(prof.latency) == {1, 2}
    for v in prof.latency.values():
        assert v["median_ms"] > 0 and v["iqr_ms"] >= 0
    assert new.training and all(m.training for m in new.modules())
    b = prof.baseline
    assert b["params_ratio"] == pytest.approx(prof.params / sum(p.numel() for p in
                                                                model.parameters()))
    assert b["macs_ratio"] < 1 and set(b["speedup"]) == {1, 2}
    d = prof.to_dict()
    assert json.loads(json.dumps(d)) == d and set(d["latency_ms"]) == {"1", "2"}
    buf = _io.StringIO()
    Console(file=buf, width=160).print(prof)
    assert "latency batch 1" in buf.getvalue() and "vs dense baseline" in buf.getvalue()


def test_onnx_runtime_latency_times_the_exported_graph(monkeypatch):
    pytest.importorskip("onnxruntime")
    import rankwise.analysis.profile as profile

    model = small_cnn().eval()
    new, _ = decompose(model, "channel", Ratio(0.25), input_shape=(3, 8, 8))
    built = []

    def spy(m, shape, example=None):
        built.append(m)
        return real(m, shape, example)

    real = profile.onnx_runner
    monkeypatch.setattr(profile, "onnx_runner", spy)
    prof = profile_model(new, (3, 8, 8), baseline=model, batch_sizes=(1, 3), min_run_time=0.01,
                         runtime="onnxruntime")
    assert built == [new, model]  # both timed as ONNX graphs, at every batch size
    assert prof.runtime == "onnxruntime" and set(prof.baseline["speedup"]) == {1, 3}
    assert all(v["median_ms"] > 0 for v in prof.latency.values())
    assert prof.to_dict()["runtime"] == "onnxruntime"
    buf = _io.StringIO()
    Console(file=buf, width=160).print(prof)
    assert "latency batch 3 (fp32, onnxruntime)" in buf.getvalue()
    with pytest.raises(ConfigError, match="float32 graph on CPU"):
        profile_model(new, (3, 8, 8), runtime="onnxruntime", precision="bf16")
    with pytest.raises(ConfigError, match="runtime='tensorrt'"):
        profile_model(new, (3, 8, 8), runtime="tensorrt")


def test_deploy_times_the_folded_copy_in_its_precision(monkeypatch):
    import rankwise.analysis.profile as profile

    model = small_cnn().eval()
    new, _ = decompose(model, "channel", Ratio(0.25), input_shape=(3, 8, 8))
    timed = []

    def spy(m, shape, bs, dev, min_run_time, example_inputs=None, precision="fp32"):
        timed.append((m, precision))
        return {"median_ms": 1.0, "iqr_ms": 0.0, "blocks": 5.0}

    monkeypatch.setattr(profile, "measure_latency", spy)
    prof = profile_model(new, (3, 8, 8), baseline=model, batch_sizes=(2,), precision="bf16",
                         deploy=True)
    (fact, p1), (dense, p2) = timed
    assert p1 == p2 == "fp32"  # the deployed copy carries bf16 in its weights: no autocast
    assert fact.precision == dense.precision == "bf16" and dense.folded == 1
    assert {p.dtype for p in dense.parameters()} == {torch.bfloat16}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in dense.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # caller's model intact
    assert prof.to_dict()["deploy"] is True
    buf = _io.StringIO()
    Console(file=buf, width=160).print(prof)
    assert "latency batch 2 (bf16, deployed)" in buf.getvalue()
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(dense(x), model(x), atol=0.1, rtol=0.05)  # bf16 of the same function
    with pytest.raises(ConfigError, match="ONNX Runtime folds BN"):
        profile_model(new, (3, 8, 8), runtime="onnxruntime", deploy=True)
    with pytest.raises(ConfigError, match="keyword inputs"):
        profile_model(new, example_inputs={"x": x}, deploy=True)


def test_bad_input_shape():
    with pytest.raises(ConfigError, match="input_shape"):
        profile_model(small_cnn(), (4, 8, 8), latency=False)


@settings(max_examples=20, deadline=None)
@given(c=st.integers(1, 6), n=st.integers(1, 6), k=st.sampled_from([1, 3, 5]),
       s=st.integers(1, 3), hw=st.integers(5, 12))
def test_conv_macs_property(c, n, k, s, hw):
    model = nn.Sequential(nn.Conv2d(c, n, k, stride=s, padding=k // 2))
    prof = profile_model(model, (c, hw, hw), latency=False)
    out = model(torch.zeros(1, c, hw, hw))
    assert prof.macs == out.numel() * c * k * k  # every output value costs c·k·k MACs


class _Attn(nn.Module):
    """Self-attention written with matmuls (no nn.Linear for the scores)."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)
        return (q @ k.transpose(-1, -2)).softmax(-1) @ v


@pytest.mark.parametrize("fused", [False, True])
def test_attention_matmuls_are_counted(fused):
    t, d = 5, 8
    if fused:
        model = nn.MultiheadAttention(d, 2, batch_first=True)
        x = torch.randn(1, t, d)
        prof = profile_model(model, example_inputs=(x, x, x), latency=False)
        projections = 4 * t * d * d  # q, k, v, out
    else:
        model = _Attn(d)
        prof = profile_model(model, (t, d), latency=False)
        projections = 3 * t * d * d
    scores_and_mix = 2 * t * t * d  # Q Kᵀ and P V
    assert prof.macs == projections + scores_and_mix
    assert sum(r.macs for r in prof.rows) == prof.macs


def test_sdpa_and_shared_module_counted_at_every_call():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.lin(self.lin(x))
            return nn.functional.scaled_dot_product_attention(y, y, y)

    prof = profile_model(Net(), (6, 4), latency=False)
    assert prof.macs == 2 * 6 * 4 * 4 + 2 * 6 * 6 * 4
    rows = {r.name: r for r in prof.rows}
    assert rows["lin"].macs == 2 * 6 * 4 * 4 and rows["(root)"].macs == 2 * 6 * 6 * 4


def test_example_inputs_dict_per_sample_and_bf16_latency():
    class KW(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 6)
            self.head = nn.Linear(6, 3)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.emb(input_ids))

    ids = torch.zeros(4, 7, dtype=torch.long)  # batch 4: MACs are per sample
    prof = profile_model(KW(), example_inputs={"input_ids": ids}, batch_sizes=(2,),
                         min_run_time=0.01, precision="bf16")
    assert prof.macs == 7 * 6 * 3 and prof.input_shape == (7,)
    assert prof.precision == "bf16" and set(prof.latency) == {2}
    assert prof.to_dict()["precision"] == "bf16"
    from collections import UserDict  # a tokenizer's BatchEncoding is a Mapping, not a dict

    keyed = profile_model(KW(), example_inputs=UserDict(input_ids=ids), latency=False)
    assert keyed.macs == prof.macs and keyed.input_shape == (7,)
    with pytest.raises(ConfigError, match="precision"):
        profile_model(KW(), example_inputs={"input_ids": ids}, precision="fp8")


def test_meta_device_counts_and_refuses_latency():
    with torch.device("meta"):
        model = small_cnn()
    prof = profile_model(model, (3, 8, 8), latency=False)
    assert prof.macs == profile_model(small_cnn(), (3, 8, 8), latency=False).macs
    with pytest.raises(ConfigError, match="meta device.*latency=False"):
        profile_model(model, (3, 8, 8))


def test_matches_fvcore_on_a_conv_net():
    fvcore = pytest.importorskip("fvcore.nn")
    from rankwise.models import create_model

    model = create_model("resnet20").eval()
    prof = profile_model(model, (3, 32, 32), latency=False)
    fa = fvcore.FlopCountAnalysis(model, torch.zeros(1, 3, 32, 32))
    fa.unsupported_ops_warnings(False)
    ops = fa.by_operator()
    assert prof.macs == ops["conv"] + ops["linear"]  # same convention for convs and linears
    assert abs(prof.macs / fa.total() - 1) < 0.02  # fvcore also counts norm and pool elements
