import json
import math
import struct

import pytest
import torch
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rankwise.compress import (
    QuantizedState,
    coding_report,
    decode_state,
    dequantize,
    encode_state,
    magnitude_prune,
    quantize_model,
    read_header,
    shannon_entropy,
)
from rankwise.errors import CheckpointError, ConfigError

try:
    import constriction  # noqa: F401

    CODECS = ["zstd", "ans"]
except ModuleNotFoundError:  # the ANS codec is optional
    CODECS = ["zstd"]
needs_ans = pytest.mark.skipif("ans" not in CODECS, reason="constriction not installed")


def random_state(seed: int, shapes: list[tuple[int, ...]]) -> QuantizedState:
    g = torch.Generator().manual_seed(seed)
    st_ = QuantizedState()
    for i, shape in enumerate(shapes):
        name = f"block{i}.conv.weight"
        st_.qweight[name] = torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)
        st_.scale[name] = torch.rand(shape[0], generator=g)
        st_.weight_dtype[name] = "float32"
    st_.other["bn.running_mean"] = torch.randn(3, generator=g)
    st_.other["bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
    st_.other["half"] = torch.randn(2, 2, generator=g).to(torch.bfloat16)
    st_.other["empty"] = torch.empty(0, 4)
    return st_


def assert_states_equal(a: QuantizedState, b: QuantizedState) -> None:
    assert a.weight_dtype == b.weight_dtype
    for group in ("qweight", "scale", "other"):
        da, db = getattr(a, group), getattr(b, group)
        assert list(da) == list(db)
        for k in da:
            assert da[k].dtype == db[k].dtype and da[k].shape == db[k].shape
            # bit-exact, NaN-safe: compare raw bytes
            assert raw(da[k]) == raw(db[k])


def raw(t: torch.Tensor) -> list[int]:
    return t.contiguous().reshape(-1).view(torch.uint8).tolist() if t.numel() else []


small_shapes = st.lists(
    st.tuples(st.integers(1, 8), st.integers(1, 6), st.integers(1, 3), st.integers(1, 3)),
    min_size=1, max_size=3,
)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), shapes=small_shapes, level=st.integers(1, 22),
       codec=st.sampled_from(CODECS), constant=st.booleans())
def test_roundtrip_random_int8_bit_exact(seed, shapes, level, codec, constant):
    state = random_state(seed, shapes)
    if constant:  # single-symbol tensors are a special case for the ANS codec
        state.qweight["block0.conv.weight"].fill_(-3)
    blob = encode_state(state, level=level, codec=codec)
    assert_states_equal(decode_state(blob), state)
    header = read_header(blob)
    assert header["level"] == level and header["codec"] == codec


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.Conv2d(4, 8, 3, padding=1)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )


@pytest.mark.parametrize("codec", CODECS)
def test_roundtrip_real_model_and_evaluation_equal(codec):
    model, _ = magnitude_prune(tiny_net(), 0.5)
    state = quantize_model(model)
    decoded = decode_state(encode_state(state, codec=codec))
    assert_states_equal(decoded, state)
    a, b = dequantize(state, model).eval(), dequantize(decoded, model).eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(a(x), b(x))


def test_header_is_json_not_pickle():
    blob = encode_state(random_state(0, [(4, 2, 3, 3)]))
    magic, hlen, _ = struct.unpack_from("<8sII", blob, 0)
    text = zstandard.ZstdDecompressor().decompress(blob[16:16 + hlen])
    header = json.loads(text)
    names = {e["name"] for e in header["entries"]}
    assert "block0.conv.weight" in names and magic == b"RWQSTATE"
    assert b"\x80" not in text  # plain JSON: no pickle protocol marker


@settings(max_examples=25, deadline=None)
@given(data=st.data(), codec=st.sampled_from(CODECS))
def test_any_single_byte_corruption_raises(data, codec):
    blob = encode_state(random_state(1, [(3, 2, 3, 3)]), level=3, codec=codec)
    pos = data.draw(st.integers(0, len(blob) - 1))
    flip = data.draw(st.integers(1, 255))
    bad = bytearray(blob)
    bad[pos] ^= flip
    with pytest.raises(CheckpointError):
        decode_state(bytes(bad))


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_truncated_or_extended_blob_raises(data):
    blob = encode_state(random_state(2, [(3, 2, 3, 3)]), level=3)
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(CheckpointError):
        decode_state(blob[:cut])
    with pytest.raises(CheckpointError):
        decode_state(blob + b"\x00")


def test_low_entropy_tensor_compresses_below_raw():
    state = QuantizedState()
    q = torch.zeros(64, 64, dtype=torch.int8)
    q[::7, ::5] = 3
    state.qweight["w"] = q
    state.scale["w"] = torch.ones(64)
    state.weight_dtype["w"] = "float32"
    rep = coding_report(state)
    row = next(r for r in rep.rows if r.name == "w")
    assert row.raw_nbytes == 64 * 64
    assert row.coded_nbytes < row.raw_nbytes / 4
    assert rep.blob_nbytes == len(encode_state(state))


def test_shannon_entropy_by_hand():
    assert shannon_entropy(torch.zeros(10, dtype=torch.int8)) == 0.0
    assert shannon_entropy(torch.tensor([1, 2, 1, 2], dtype=torch.int8)) == pytest.approx(1.0)
    t = torch.tensor([0, 0, 1, 2], dtype=torch.int8)  # p = 1/2, 1/4, 1/4
    assert shannon_entropy(t) == pytest.approx(1.5)
    uniform = torch.arange(-128, 128, dtype=torch.int16).to(torch.int8)
    assert shannon_entropy(uniform) == pytest.approx(8.0)


def test_coding_report_entropy_bound_for_iid_symbols():
    # i.i.d. symbols: no coder beats the entropy by more than the header/frame overhead.
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.7, 0.1, 0.1, 0.05, 0.05])
    q = (torch.multinomial(probs, 20_000, replacement=True, generator=g) - 2).to(torch.int8)
    state = QuantizedState({"w": q.view(200, 100)}, {"w": torch.ones(200)}, {"w": "float32"})
    rep = coding_report(state, level=19)
    row = rep.rows[0]
    h = -sum(float(p) * math.log2(float(p)) for p in probs)
    assert row.entropy_bits == pytest.approx(h, abs=0.05)
    assert row.bits_per_element >= row.entropy_bits - 0.05
    assert row.bits_per_element < 8.0
    assert rep.qweight_bits_per_weight == pytest.approx(row.bits_per_element)


@needs_ans
def test_ans_reaches_entropy_for_iid_symbols():
    g = torch.Generator().manual_seed(1)
    probs = torch.tensor([0.02, 0.08, 0.8, 0.08, 0.02])
    q = (torch.multinomial(probs, 50_000, replacement=True, generator=g) - 2).to(torch.int8)
    state = QuantizedState({"w": q.view(500, 100)}, {"w": torch.ones(500)}, {"w": "float32"})
    ans = coding_report(state, codec="ans").rows[0]
    zstd = coding_report(state, codec="zstd").rows[0]
    assert ans.entropy_bits - 0.01 <= ans.bits_per_element <= ans.entropy_bits + 0.02
    assert ans.bits_per_element < zstd.bits_per_element
    decoded = decode_state(encode_state(state, codec="ans"))
    assert torch.equal(decoded.qweight["w"], q.view(500, 100))


def test_bad_level_and_codec():
    with pytest.raises(ConfigError):
        encode_state(QuantizedState(), level=0)
    with pytest.raises(ConfigError):
        encode_state(QuantizedState(), codec="huffman")
