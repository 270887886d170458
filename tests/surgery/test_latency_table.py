"""Latency table: cache keying/invalidation, analytic fallback, candidate rank grids (no timing)."""

import dataclasses
import json

import pytest

from rankwise.errors import ConfigError
from rankwise.layers import FORMATS
from rankwise.layers.shapes import ConvSpec, conv2d_macs
from rankwise.surgery.latency_measure import candidate_ranks, layer_options
from rankwise.surgery.latency_table import (
    DENSE,
    LatencyTable,
    TableKey,
    analytic_ms,
    layer_key,
    option_key,
)

KEY = TableKey("fp32", 1, 8, True, "Some CPU", ("avx2", "avx512f"), "AVX512", "2.0", 1)
SPEC = ConvSpec(64, 64, (3, 3), padding=(1, 1), bias=False)


def test_saved_table_reloads_only_under_the_same_key(tmp_path):
    t = LatencyTable.load(KEY, tmp_path)
    lk = layer_key(SPEC, (56, 56))
    t.put(lk, DENSE, 3.5)
    t.put(lk, ("tucker2", (16, 16)), 1.25)
    t.save()
    again = LatencyTable.load(KEY, tmp_path)
    assert again.get(lk, DENSE) == 3.5 and again.get(lk, ("tucker2", (16, 16))) == 1.25
    assert again.missing(lk, [DENSE, ("channel", (16,))]) == [("channel", (16,))]
    for field, value in [("torch", "2.1"), ("threads", 2), ("precision", "bf16"),
                         ("batch", 1), ("channels_last", False), ("cpu", "Other CPU"),
                         ("flags", ("avx2",)), ("capability", "AVX2")]:
        other = dataclasses.replace(KEY, **{field: value})
        assert other.digest() != KEY.digest(), field
        assert LatencyTable.load(other, tmp_path).entries == {}, field


def test_stale_or_corrupt_file_is_ignored(tmp_path):
    file = tmp_path / f"{KEY.digest()}.json"
    stale = dataclasses.replace(KEY, torch="1.0").to_dict()
    file.write_text(json.dumps({"key": stale, "entries": {"x": {"dense": 1.0}}}))
    assert LatencyTable.load(KEY, tmp_path).entries == {}
    file.write_text("{not json")
    t = LatencyTable.load(KEY, tmp_path)
    assert t.entries == {}
    t.put("x", DENSE, 2.0)
    t.save()  # rewrites the stale file under the right key
    assert json.loads(file.read_text())["key"] == KEY.to_dict()
    with pytest.raises(ConfigError):
        LatencyTable(KEY).save()


def test_keys_name_the_layer_and_option():
    assert layer_key(SPEC, (56, 56)) == "c64-n64-k3x3-s1x1-p1x1-d1x1-g1-b0-zeros@56x56"
    assert option_key(DENSE) == "dense" and option_key(("tucker2", (32, 16))) == "tucker2:32,16"


def test_analytic_fallback_by_hand():
    # 1×1 64→64 on 8×8, batch 1, fp32: MACs 64·64·64 = 262144 → 6.5536 µs at 40 GMAC/s;
    # bytes 4·(64·64 + 64·64) + 4·64·64 = 49152 → 4.096 µs at 12 GB/s; + 8 µs per op.
    one = ConvSpec(64, 64, (1, 1), bias=False)
    assert analytic_ms(one, (8, 8), DENSE, "fp32", 1) == pytest.approx(1e-3 * (6.5536 + 8))
    # channel rank 16 = two convs 64→16, 16→64: each 65536 MACs (1.6384 µs) vs bytes
    # 4·(4096 + 1024) + 4·1024 = 24576 (2.048 µs): memory-bound, + 8 µs each.
    assert analytic_ms(one, (8, 8), ("channel", (16,)), "fp32", 1) == pytest.approx(
        2e-3 * (2.048 + 8))
    lo = analytic_ms(SPEC, (56, 56), ("tucker2", (16, 16)), "bf16", 8)
    hi = analytic_ms(SPEC, (56, 56), ("tucker2", (48, 48)), "bf16", 8)
    assert lo < hi < analytic_ms(SPEC, (56, 56), DENSE, "fp32", 8)
    with pytest.raises(ConfigError):
        analytic_ms(SPEC, (56, 56), ("cp", (8,)), "fp32", 1)


def test_candidate_ranks_by_hand():
    # channel at rank r on 3×3 64→64: HW·r·(576 + 64) vs dense HW·36864, so f·dense allows
    # r ≤ 57.6·f: 0.3 → 17, 0.62 → 35, 0.75 → 43; multiples of 16 → 16, 32.
    assert candidate_ranks("channel", SPEC, (56, 56), 16) == [(16,), (32,)]
    for fmt in ("channel", "spatial", "tucker2"):
        ranks = candidate_ranks(fmt, SPEC, (56, 56), 16)
        assert ranks == sorted(set(ranks)) and ranks
        dense = conv2d_macs(SPEC, (56, 56))
        for r in ranks:
            assert all(x % 16 == 0 for x in r)
            rank = r[0] if len(r) == 1 else r
            assert FORMATS[fmt].cost(SPEC, rank, (56, 56))[1] <= 0.75 * dense
    narrow = ConvSpec(8, 8, (3, 3), padding=(1, 1), bias=False)
    assert all(r[0] <= 8 for r in candidate_ranks("channel", narrow, (8, 8), 16))
    with pytest.raises(ConfigError):
        candidate_ranks("channel", SPEC, (8, 8), 0)


def test_one_by_one_convs_offer_channel_only():
    opts = layer_options(ConvSpec(64, 256, (1, 1), bias=False), (56, 56),
                         ("channel", "spatial", "tucker2"), 16)
    assert opts[0] == DENSE and {o[0] for o in opts[1:]} == {"channel"}
    with pytest.raises(ConfigError):
        layer_options(SPEC, (56, 56), ("cp",), 16)
