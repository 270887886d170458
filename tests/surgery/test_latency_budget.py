"""Latency allocator on fake latency tables: meets the target, never picks a slower layer."""

import pytest
import torch
from torch import nn

from rankwise.errors import ConfigError, LatencyTargetWarning
from rankwise.layers import FORMATS, FactorizedLayer
from rankwise.layers.shapes import ConvSpec, conv2d_macs
from rankwise.surgery.latency_budget import (
    LatencyBudget,
    apply_choices,
    latency_plan,
    mean_energy,
    model_fingerprint,
    parse_latency_budget,
)
from rankwise.surgery.latency_measure import layer_options
from rankwise.surgery.latency_table import DENSE, LatencyTable, TableKey, layer_key

KEY = TableKey("fp32", 1, 2, True, "Fake", (), "AVX512", "x", 1)
SHAPE = (3, 8, 8)


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.ReLU(),
                         nn.Conv2d(32, 64, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(64, 32, 3, padding=1, bias=False)).eval()


def fake_table(model: nn.Module, ms_of, align: int = 8) -> tuple[LatencyTable, dict]:
    """Every option of every conv, timed by `ms_of(spec, option)`; returns table and options."""
    table, opts = LatencyTable(KEY), {}
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d):
            spec = ConvSpec.from_conv(conv)
            opts[name] = (spec, layer_options(spec, (8, 8), ("channel", "spatial", "tucker2"),
                                              align))
            for o in opts[name][1]:
                table.put(layer_key(spec, (8, 8)), o, ms_of(spec, o))
    return table, opts


def macs_ms(spec, option):  # ms = MACs / 1e5, + 0.05 per sub-conv: fewer MACs, less time
    fmt, rank = option
    if fmt == "dense":
        return conv2d_macs(spec, (8, 8)) / 1e5 + 0.05
    r = rank[0] if len(rank) == 1 else rank
    return FORMATS[fmt].cost(spec, r, (8, 8))[1] / 1e5 + 0.05 * (3 if fmt == "tucker2" else 2)


def chosen_ms(table, opts, choices, fixed):
    total = fixed
    for name, (spec, _) in opts.items():
        c = choices[name]
        o = DENSE if c is None else (c[0], (c[1],) if isinstance(c[1], int) else tuple(c[1]))
        total += table.get(layer_key(spec, (8, 8)), o)
    return total


@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_plan_meets_the_target_of_the_fake_table(ratio):
    model = tiny()
    table, opts = fake_table(model, macs_ms)
    policy = LatencyBudget(ratio=ratio, batch=2, measure=False, table=table, fixed_ms=0.3)
    plan = latency_plan(model, None, policy, torch.zeros(1, *SHAPE))
    dense = chosen_ms(table, opts, {n: None for n in opts}, 0.3)
    assert plan.dense_ms == pytest.approx(dense)
    assert plan.target_ms == pytest.approx(ratio * dense)
    total = chosen_ms(table, opts, plan.choices, 0.3)
    assert plan.met and total <= ratio * dense * (1 + 1e-9)
    assert plan.predicted_ms == pytest.approx(total)
    assert any(c is not None for c in plan.choices.values())
    assert all(r["source"] == "measured" for r in plan.rows)
    assert plan.choices["4"] is None or plan.choices["4"][0] == "channel"  # 1×1: channel only
    for name, c in plan.choices.items():  # no layer slower than its dense layer in the table
        if c is not None:
            spec = opts[name][0]
            rank = (c[1],) if isinstance(c[1], int) else tuple(c[1])
            lk = layer_key(spec, (8, 8))
            assert table.get(lk, (c[0], rank)) < table.get(lk, DENSE)
    new = apply_choices(model, plan.choices)
    assert new(torch.zeros(2, *SHAPE)).shape == (2, 32, 8, 8)
    assert sum(isinstance(m, FactorizedLayer) for m in new.modules()) == sum(
        c is not None for c in plan.choices.values())
    assert mean_energy(model, plan.choices) == pytest.approx(plan.energy)
    assert 0.0 <= plan.energy < 1.0


def test_options_slower_than_dense_are_never_chosen():
    def tucker_only_fast(spec, option):  # channel / spatial are slower than dense everywhere
        base = conv2d_macs(spec, (8, 8)) / 1e5 + 0.05
        return base * (0.3 if option[0] == "tucker2" else 1.5 if option[0] != "dense" else 1.0)

    model = tiny()
    table, _ = fake_table(model, tucker_only_fast)
    policy = LatencyBudget(ratio=0.2, batch=2, measure=False, table=table, fixed_ms=0.0)
    with pytest.warns(LatencyTargetWarning, match="out of reach"):
        plan = latency_plan(model, None, policy, SHAPE)
    assert not plan.met
    formats = {c[0] for c in plan.choices.values() if c is not None}
    assert formats == {"tucker2"}
    assert plan.choices["4"] is None  # the 1×1 conv has no option faster than dense


def test_absolute_target_and_missing_entries_fall_back_to_analytic():
    model = tiny()
    table, opts = fake_table(model, macs_ms)
    lk = layer_key(opts["2"][0], (8, 8))
    del table.entries[lk]
    dense = chosen_ms(table, {k: v for k, v in opts.items() if k != "2"},
                      {n: None for n in opts}, 0.0)
    policy = LatencyBudget(target_ms=10.0, batch=2, measure=False, table=table, fixed_ms=0.0)
    plan = latency_plan(model, ["0", "2", "4", "6"], policy, SHAPE)
    assert plan.target_ms == 10.0
    assert {r["name"]: r["source"] for r in plan.rows}["2"] == "analytic"
    assert plan.dense_ms > dense  # the analytic dense time of layer "2" was added


def test_policy_string_round_trip_and_validation():
    p = LatencyBudget(ratio=0.5, precision="bf16", batch=8, threads=2)
    assert parse_latency_budget(str(p)) == p
    assert parse_latency_budget("budget:latency=0.5") == LatencyBudget(ratio=0.5)
    assert parse_latency_budget("budget:latency_ms=120") == LatencyBudget(target_ms=120.0)
    assert parse_latency_budget("budget:macs=0.5") is None
    assert LatencyBudget.is_global and LatencyBudget.metric == "latency"
    for bad in [dict(), dict(ratio=0.5, target_ms=3.0), dict(ratio=1.5), dict(target_ms=-1.0),
                dict(ratio=0.5, precision="fp8"), dict(ratio=0.5, formats=("cp",))]:
        with pytest.raises(ConfigError):
            LatencyBudget(**bad)
    with pytest.raises(ConfigError):
        parse_latency_budget("budget:latency=0.5,speed=3")
    with pytest.raises(ConfigError):
        p.select([], (4,))


def test_cached_fixed_share_scales_to_the_table():
    model = tiny()
    table, opts = fake_table(model, macs_ms)
    table.entries[model_fingerprint(model, SHAPE, list(opts))] = {"fixed_share": 0.25}
    policy = LatencyBudget(ratio=0.6, batch=2, measure=False, table=table)
    plan = latency_plan(model, None, policy, SHAPE)
    convs = chosen_ms(table, opts, {n: None for n in opts}, 0.0)
    assert plan.fixed_ms == pytest.approx(convs / 3)  # 0.25 of the model = 1/3 of the convs
    assert plan.dense_ms == pytest.approx(4 * convs / 3)
    assert plan.met and plan.predicted_ms <= 0.6 * plan.dense_ms * (1 + 1e-9)
    # the share was measured with every conv timed alone: it is not reused for fewer of them
    fewer = latency_plan(model, list(opts)[1:], policy, SHAPE)
    assert fewer.fixed_ms == 0.0


def test_decompose_with_a_latency_budget_applies_the_plan_per_layer_format():
    import rankwise

    model = tiny()
    table, opts = fake_table(model, macs_ms)
    policy = LatencyBudget(ratio=0.5, batch=2, measure=False, table=table, fixed_ms=0.3)
    plan = latency_plan(model, None, policy, torch.zeros(1, *SHAPE))
    small, report = rankwise.decompose(model, format="tucker2", rank=policy,
                                       example_inputs=(torch.zeros(1, *SHAPE),))
    for name, choice in plan.choices.items():
        layer = small.get_submodule(name)
        if choice is None:
            assert isinstance(layer, nn.Conv2d)
        else:  # the format the allocator picked, not the `format=` argument
            assert isinstance(layer, FORMATS[choice[0]])
    assert small(torch.zeros(2, *SHAPE)).shape == (2, 32, 8, 8)
    assert {r.name for r in report.rows if r.format is not None} == {
        n for n, c in plan.choices.items() if c is not None}
    with pytest.raises(ConfigError, match="example_inputs"):
        rankwise.decompose(model, rank=policy)


@pytest.mark.parametrize("flags", [{"avx2"}, {"avx2", "avx512_bf16"}])
def test_planning_bf16_on_a_cpu_that_emulates_it_warns(monkeypatch, flags):
    import warnings

    import rankwise.analysis.precision as precision
    from rankwise.errors import EmulatedPrecisionWarning

    monkeypatch.setattr(precision, "_cpu_flags", lambda: set(flags))
    model = tiny()
    table, _ = fake_table(model, macs_ms)
    policy = LatencyBudget(ratio=0.5, precision="bf16", batch=2, table=table, fixed_ms=0.0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        latency_plan(model, ["0", "2", "4", "6"], policy, SHAPE)
    emulated = [w for w in seen if w.category is EmulatedPrecisionWarning]
    assert len(emulated) == (0 if "avx512_bf16" in flags else 1)
    assert all("plan in fp32" in str(w.message) for w in emulated)
