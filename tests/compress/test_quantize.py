import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from rankwise.compress import (
    dequantize,
    dequantize_per_channel,
    fake_quantize,
    magnitude_prune,
    quantize_dynamic_linear,
    quantize_model,
    quantize_per_channel,
)
from rankwise.errors import CheckpointError, ConfigError


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.Conv2d(4, 8, 3, padding=1)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


shapes = st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3))


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), log_mag=st.floats(-6, 3),
       zero_rows=st.integers(0, 2))
def test_per_channel_error_bound_and_range(shape, seed, log_mag, zero_rows):
    g = torch.Generator().manual_seed(seed)
    # Channels of very different magnitudes, some exactly zero.
    w = torch.randn(shape, generator=g) * torch.logspace(log_mag - 2, log_mag, shape[0]).view(
        -1, 1, 1, 1
    )
    w[: min(zero_rows, shape[0])] = 0
    q, scale = quantize_per_channel(w)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert scale.dtype == torch.float32 and scale.shape == (shape[0],)
    assert int(q.min()) >= -127 and int(q.max()) <= 127
    amax = w.abs().flatten(1).amax(dim=1)
    torch.testing.assert_close(scale, amax / 127)
    deq = dequantize_per_channel(q, scale)
    assert torch.isfinite(deq).all()
    err = (w - deq).abs().flatten(1)
    bound = (scale / 2 + amax * 1e-6).view(-1, 1)  # float32 slack in the product q * scale
    assert bool((err <= bound).all())
    zero = amax == 0
    assert bool((scale[zero] == 0).all()) and bool((q[zero] == 0).all())
    # The largest-magnitude entry of each nonzero channel maps to ±127.
    assert bool((q.flatten(1).abs().amax(dim=1)[~zero] == 127).all())


def test_round_to_nearest_by_hand():
    w = torch.tensor([[1.27, -0.5, 0.004, 0.006, 0.0149, 0.0151]])
    q, scale = quantize_per_channel(w)
    assert scale.item() == pytest.approx(0.01)
    assert q.tolist() == [[127, -50, 0, 1, 1, 2]]


def test_quantize_model_keys_and_dequantize():
    model = tiny_net(0)
    model(torch.randn(4, 3, 8, 8))  # give BatchNorm non-default running stats
    state = quantize_model(model)
    conv_linear = {"0.weight", "3.0.weight", "3.1.weight", "6.weight"}
    assert set(state.qweight) == set(state.scale) == conv_linear
    assert set(state.other) | conv_linear == set(model.state_dict())
    assert torch.equal(state.other["1.running_var"], model[1].running_var)
    assert all(state.weight_dtype[k] == "float32" for k in conv_linear)
    assert state.num_quantized() == sum(model.state_dict()[k].numel() for k in conv_linear)
    deq = dequantize(state, model)
    assert deq is not model
    for k in conv_linear:
        w, wd = model.state_dict()[k], deq.state_dict()[k]
        assert not torch.equal(w, wd)  # quantization changed it ...
        assert (w - wd).abs().max() <= state.scale[k].max() / 2 * (1 + 1e-5)  # ... within bound
    for k, v in state.other.items():
        assert torch.equal(deq.state_dict()[k], v)
    model.eval()
    deq.eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(deq(x), model(x), atol=0.05, rtol=0.05)


def test_quantization_preserves_pruned_zeros():
    pruned, _ = magnitude_prune(tiny_net(1), 0.6, scope="layer")
    state = quantize_model(pruned)
    for k, q in state.qweight.items():
        w = pruned.state_dict()[k]
        assert bool((q[w == 0] == 0).all())
    fq = fake_quantize(pruned)
    for k in state.qweight:
        assert bool((fq.state_dict()[k][pruned.state_dict()[k] == 0] == 0).all())


def test_include_exclude_and_mismatch():
    model = tiny_net(2)
    state = quantize_model(model, exclude=["6"])
    assert "6.weight" in state.other and "6.weight" not in state.qweight
    torch.testing.assert_close(dequantize(state, model)[6].weight, model[6].weight)
    other = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(CheckpointError):
        dequantize(state, other)
    prune.l1_unstructured(model[6], "weight", amount=0.5)  # mask not made permanent
    with pytest.raises(ConfigError, match="6.weight"):
        quantize_model(model)


def test_dynamic_int8_linear_path():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    qm = quantize_dynamic_linear(model)
    x = torch.randn(8, 32)
    out = qm(x)
    assert out.shape == (8, 10)
    torch.testing.assert_close(out, model(x), atol=0.05, rtol=0.05)
    assert not any(isinstance(m, nn.Linear) and type(m) is nn.Linear for m in qm.modules())
