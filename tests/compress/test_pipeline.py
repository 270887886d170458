"""Pipeline invariants: stage order, per-stage numbers, lossless coding, bit-exact reload."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from rankwise import io
from rankwise.compress.artifact import (
    BLOB_FILE,
    FP32_FILE,
    INT8_FILE,
    is_compressed_dir,
    load_compressed,
    save_compressed,
)
from rankwise.compress.pipeline import PipelineConfig, parse_lowrank, parse_prune, run_pipeline
from rankwise.errors import CheckpointError, ConfigError
from rankwise.layers import FactorizedLayer

SHAPE = (3, 8, 8)


def make_model(seed: int = 0) -> nn.Module:
    """~110k weights: big enough that the int8 payload outweighs the coded blob's JSON header
    (about 190 bytes per tensor)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
        nn.Conv2d(128, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, 10)).eval()


def fake_eval(model: nn.Module) -> dict[str, float]:
    """A deterministic stand-in metric: agreement of the model with a fixed input's argmax."""
    x = torch.randn(32, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.eval()(x)
    return {"acc": float(out.argmax(1).float().mean() / 10), "loss": float(out.abs().mean())}


FULL = PipelineConfig(lowrank="tucker2:ratio:0.5", prune="magnitude:0.5", quantize="int8",
                      entropy_code="zstd")


@pytest.fixture(scope="module")
def full_result():
    return run_pipeline(make_model(), FULL, SHAPE, evaluate=fake_eval)


def test_stage_order_and_subsets():
    assert FULL.stages() == ["baseline", "lowrank", "prune", "quantize", "entropy"]
    assert PipelineConfig(quantize="int8").stages() == ["baseline", "quantize"]
    r = run_pipeline(make_model(), PipelineConfig(prune="filters:0.25", entropy_code="zstd"),
                     SHAPE)
    assert [row.stage for row in r.rows] == ["baseline", "prune", "entropy"]
    assert all(row.acc is None for row in r.rows)


def test_input_model_untouched_and_lowrank_stage(full_result):
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_pipeline(model, PipelineConfig(lowrank="channel:ratio:0.5"), SHAPE)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    base, low = full_result.row("baseline"), full_result.row("lowrank")
    assert base.params == sum(p.numel() for p in make_model().parameters())
    totals = full_result.reports["lowrank"]["totals"]
    assert low.params == totals["params_after"] and low.macs == totals["macs_after"]
    assert low.params < base.params and low.macs < base.macs
    assert any(isinstance(m, FactorizedLayer) for m in full_result.model.modules())


def test_magnitude_prune_stage_numbers(full_result):
    low, pr = full_result.row("lowrank"), full_result.row("prune")
    assert pr.params == low.params and pr.weight_params == low.weight_params
    expected = low.weight_params - round(0.5 * low.weight_params)
    assert abs(pr.nonzero_weight_params - expected) <= 2  # only pre-existing exact zeros differ
    assert pr.sparsity == pytest.approx(0.5, abs=1e-3)
    assert pr.effective_macs < 0.75 * pr.macs and pr.macs == low.macs
    assert pr.bytes_fp32 == low.bytes_fp32  # dense storage does not shrink by pruning


def test_filter_prune_stage_numbers():
    r = run_pipeline(make_model(), PipelineConfig(prune="filters:0.25"), SHAPE)
    pr = r.row("prune")
    convs = [m for m in make_model().modules() if isinstance(m, nn.Conv2d)]
    zeros = sum(round(0.25 * c.out_channels) * c.weight[0].numel() for c in convs)
    assert pr.weight_params - pr.nonzero_weight_params == zeros
    report = r.reports["prune"]
    assert [row["pruned_filters"] for row in report["layers"]] == [8, 32, 16]


def test_quantize_and_coding_stages(full_result):
    pr, q, ent = (full_result.row(s) for s in ("prune", "quantize", "entropy"))
    assert q.params == pr.params and q.nonzero_weight_params <= pr.nonzero_weight_params
    state = full_result.state
    assert q.bytes_int8 == state.nbytes()
    assert q.bytes_int8 < q.bytes_fp32 / 2 and q.bytes_stored == q.bytes_int8
    # coding: fewer bytes than raw int8, lossless (same metric, same weights)
    assert ent.bytes_coded == len(full_result.blob) and ent.bytes_stored == ent.bytes_coded
    assert ent.bytes_coded < ent.bytes_int8
    assert ent.acc == q.acc and ent.loss == q.loss
    assert ent.nonzero_params == q.nonzero_params
    summary = full_result.reports["entropy"]
    assert summary["blob_nbytes"] == ent.bytes_coded
    qw = summary["groups"]["qweight"]
    assert qw["raw_nbytes"] == state.num_quantized() and qw["coded_nbytes"] < qw["raw_nbytes"]
    assert summary["qweight_bits_per_weight"] < 8.0  # half the weights are zero


def test_quantized_weights_are_q_times_scale(full_result):
    state, model = full_result.state, full_result.model
    sd = model.state_dict()
    for key, q in state.qweight.items():
        shape = (-1,) + (1,) * (q.dim() - 1)
        assert torch.equal(sd[key], q.float() * state.scale[key].view(shape))


@pytest.mark.parametrize("cfg, artifact", [
    (FULL, BLOB_FILE),
    (PipelineConfig(lowrank="channel:ratio:0.5", quantize="int8", entropy_code="ans"), BLOB_FILE),
    (PipelineConfig(prune="filters:0.3", quantize="int8"), INT8_FILE),
    (PipelineConfig(lowrank="tucker2:fixed:8", skip_first_conv=True, entropy_code="zstd"),
     BLOB_FILE),
    (PipelineConfig(prune="magnitude:0.3"), FP32_FILE),
])
def test_reload_is_bit_exact(tmp_path, cfg, artifact):
    if cfg.entropy_code == "ans":
        pytest.importorskip("constriction")
    result = run_pipeline(make_model(), cfg, SHAPE, evaluate=fake_eval)
    out = save_compressed(result, tmp_path / "c", input_shape=SHAPE, meta={"note": "x"})
    files = {p.name for p in out.iterdir()}
    assert files == {"model.json", artifact}
    assert is_compressed_dir(out) == (artifact != FP32_FILE)
    config = io.read_config(out)
    assert config["meta"]["compressed"]["artifact"] == artifact
    assert config["meta"]["compressed"]["stages"] == cfg.stages()
    loaded = load_compressed(out, model=make_model(seed=123))
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model.eval()(x))
    assert fake_eval(loaded) == fake_eval(result.model)
    for k, v in result.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_blob_is_smaller_on_disk_than_fp32(tmp_path, full_result):
    out = save_compressed(full_result, tmp_path / "c")
    assert (out / BLOB_FILE).stat().st_size == full_result.row("entropy").bytes_coded
    assert (out / BLOB_FILE).stat().st_size < full_result.row("baseline").bytes_fp32 / 4


def test_corrupt_or_missing_artifact_raises(tmp_path, full_result):
    out = save_compressed(full_result, tmp_path / "c")
    blob = bytearray((out / BLOB_FILE).read_bytes())
    blob[-5] ^= 0xFF
    (out / BLOB_FILE).write_bytes(bytes(blob))
    with pytest.raises(CheckpointError):
        load_compressed(out, model=make_model())
    (out / BLOB_FILE).unlink()
    with pytest.raises(CheckpointError, match="not found"):
        load_compressed(out, model=make_model())
    with pytest.raises(CheckpointError, match="arch"):
        load_compressed(save_compressed(full_result, tmp_path / "d"))  # no arch, no model=


def test_save_replaces_previous_artifacts(tmp_path, full_result):
    out = save_compressed(full_result, tmp_path / "c")
    plain = run_pipeline(make_model(), PipelineConfig(prune="magnitude:0.1"), SHAPE)
    save_compressed(plain, out)
    assert {p.name for p in out.iterdir()} == {"model.json", FP32_FILE}
    assert not is_compressed_dir(out)


def test_parsers_and_config_validation():
    assert parse_lowrank("tucker2:energy:0.9") == ("tucker2", "energy:0.9")
    assert parse_lowrank("channel:budget:params=0.5") == ("channel", "budget:params=0.5")
    assert parse_prune("filters:0.3") == ("filters", 0.3)
    for bad in ("tucker2", "nosuch:energy:0.9", "tucker2:energy:2"):
        with pytest.raises(ConfigError):
            parse_lowrank(bad)
    for bad in ("magnitude", "magnitude:1.5", "random:0.1", "filters:x"):
        with pytest.raises(ConfigError, match="--prune"):
            parse_prune(bad)
    with pytest.raises(ConfigError, match="int8"):
        PipelineConfig(quantize="int4")
    with pytest.raises(ConfigError, match="entropy"):
        PipelineConfig(entropy_code="gzip")


def test_report_is_json_and_rows_consistent(full_result):
    d = json.loads(json.dumps(full_result.to_dict()))
    assert [s["stage"] for s in d["stages"]] == FULL.stages()
    assert d["config"]["lowrank"] == FULL.lowrank and set(d["reports"]) == set(FULL.stages()[1:])
    for row in d["stages"]:
        assert row["nonzero_params"] <= row["params"] and row["effective_macs"] <= row["macs"]
        assert row["sparsity"] == pytest.approx(
            1 - row["nonzero_weight_params"] / row["weight_params"])
    with pytest.raises(KeyError, match="did not run"):
        run_pipeline(make_model(), PipelineConfig(), SHAPE).row("prune")


# ------------------------------------------------------------- faults: NaN input, tampering


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_layer(value):
    model = make_model()
    with torch.no_grad():
        model[3].weight[5, 2, 1, 1] = value
    with pytest.raises(ConfigError, match=r"'3\.weight'.*layer 3.*NaN/Inf") as err:
        run_pipeline(model, FULL, SHAPE)
    assert "bug" not in str(err.value)


def test_tampered_int8_payload_is_detected(tmp_path):
    result = run_pipeline(make_model(), PipelineConfig(quantize="int8"), SHAPE)
    out = save_compressed(result, tmp_path / "c")
    f = out / INT8_FILE
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x01  # one int8 weight changed by one step: would load silently
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_compressed(out, model=make_model())


def test_artifact_from_another_run_is_detected(tmp_path, full_result):
    a = save_compressed(full_result, tmp_path / "a")
    other = run_pipeline(make_model(seed=5), FULL, SHAPE)
    b = save_compressed(other, tmp_path / "b")
    (a / BLOB_FILE).write_bytes((b / BLOB_FILE).read_bytes())  # a blob that decodes fine
    with pytest.raises(CheckpointError, match="checksum"):
        load_compressed(a, model=make_model())


def test_edited_model_json_is_checked_against_the_artifact_header(tmp_path, full_result):
    out = save_compressed(full_result, tmp_path / "c")
    cfg = json.loads((out / "model.json").read_text())
    name = next(iter(cfg["factorized"]))
    rank = cfg["factorized"][name]["rank"]
    cfg["factorized"][name]["rank"] = [r + 1 for r in rank] if isinstance(rank, list) \
        else rank + 1
    (out / "model.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"has shape .*expects"):
        load_compressed(out, model=make_model())


def test_compressed_model_json_is_strict_json(tmp_path, full_result):
    out = save_compressed(full_result, tmp_path / "c", meta={"acc": float("nan")})

    def refuse(token):
        raise AssertionError(f"invalid JSON token {token}")

    cfg = json.loads((out / "model.json").read_text(), parse_constant=refuse)
    assert cfg["meta"]["acc"] is None
    assert len(cfg["meta"]["compressed"]["artifact_sha256"]) == 64
