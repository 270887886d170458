"""The latency allocator on linears: a linear is keyed and timed at the rows per sample it sees
(the sequence length in a transformer, 1 for a head), may become the two-factor `svd` format,
and a model that takes token ids by keyword is planned, decomposed and timed like an image
model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rankwise
from rankwise.errors import ConfigError
from rankwise.layers import FORMATS
from rankwise.layers.lowrank_linear import LowRankLinear
from rankwise.layers.shapes import LinearSpec, linear_macs
from rankwise.surgery.latency_budget import LatencyBudget, latency_plan
from rankwise.surgery.latency_measure import CONV_FORMATS, layer_input_shape, layer_options
from rankwise.surgery.latency_table import (
    DENSE,
    LatencyTable,
    TableKey,
    analytic_ms,
    layer_key,
    sub_layers,
)

KEY = TableKey("fp32", 1, 2, True, "Fake", (), "AVX512", "x", 1)
TOKENS = 16


class TokenMLP(nn.Module):
    """Token ids `(B, T)` → logits `(B, 10)`: an embedding, a residual MLP on every token and a
    head on the mean token (which sees one row per sample)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 64)
        self.up, self.down, self.head = nn.Linear(64, 256), nn.Linear(256, 64), nn.Linear(64, 10)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        h = self.emb(input_ids)
        h = h + self.down(torch.relu(self.up(h)))
        return self.head(h.mean(1))


def tokens(batch: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, 50, (batch, TOKENS), generator=g),
            "attention_mask": torch.ones(batch, TOKENS, dtype=torch.long)}


def model() -> TokenMLP:
    torch.manual_seed(0)
    return TokenMLP().eval()


def test_a_linear_is_keyed_by_its_rows_and_offered_aligned_svd_ranks():
    spec = LinearSpec(256, 1024)
    assert layer_key(spec, (128, 1)) == "lin-i256-o1024-b1@t128"
    assert layer_key(spec, (128, 1)) != layer_key(spec, (1, 1))
    options = layer_options(spec, (128, 1), CONV_FORMATS, 16)
    assert options[0] == DENSE and len(options) > 3
    for fmt, (r,) in options[1:]:
        assert fmt == "svd" and r % 16 == 0
        assert FORMATS["svd"].cost(spec, r)[1] < linear_macs(spec)
    assert layer_input_shape(spec, (128, 1), 2) == (2, 128, 256)
    assert layer_input_shape(spec, (1, 1), 2) == (2, 256)
    # the analytic fallback: time grows with the rows and falls with the rank
    small = ("svd", options[1][1])
    assert analytic_ms(spec, (128, 1), small, "fp32", 1) < analytic_ms(spec, (128, 1), DENSE,
                                                                       "fp32", 1)
    assert analytic_ms(spec, (128, 1), DENSE, "fp32", 1) > analytic_ms(spec, (1, 1), DENSE,
                                                                       "fp32", 1)
    assert [s.out_features for s in sub_layers(spec, small)] == [small[1][0], 1024]
    with pytest.raises(ConfigError, match="svd"):
        sub_layers(spec, ("channel", (16,)))


def fake_table(m: nn.Module) -> LatencyTable:
    """ms = rows · MACs / 1e5 + 0.05 per sub-layer for every option of every linear."""
    table = LatencyTable(KEY)
    for name, rows in (("up", TOKENS), ("down", TOKENS), ("head", 1)):
        spec = LinearSpec.from_linear(m.get_submodule(name))
        for o in layer_options(spec, (rows, 1), CONV_FORMATS, 8):
            macs = linear_macs(spec) if o == DENSE else FORMATS["svd"].cost(spec, o[1][0])[1]
            table.put(layer_key(spec, (rows, 1)), o, rows * macs / 1e5 + 0.05 * (1 + (o != DENSE)))
    return table


def test_a_token_model_is_planned_on_its_keyword_inputs_and_decomposed():
    m = model()
    policy = LatencyBudget(ratio=0.5, batch=2, measure=False, table=fake_table(m), fixed_ms=0.1,
                           align=8)
    plan = latency_plan(m, None, policy, tokens())
    assert plan.met and plan.predicted_ms <= 0.5 * plan.dense_ms * (1 + 1e-9)
    assert {r["layer"] for r in plan.rows} == {"lin-i64-o256-b1@t16", "lin-i256-o64-b1@t16",
                                                "lin-i64-o10-b1@t1"}
    assert all(r["source"] == "measured" for r in plan.rows)  # every entry came from the table
    chosen = {n: c for n, c in plan.choices.items() if c is not None}
    assert chosen and {c[0] for c in chosen.values()} == {"svd"}
    # decompose follows the plan whatever linear format it was given
    small, report = rankwise.decompose(m, linear_format="tt", rank=policy,
                                       example_inputs=tokens())
    for name, (_, rank) in chosen.items():
        layer = small.get_submodule(name)
        assert isinstance(layer, LowRankLinear) and layer.rank == rank
    assert {r.name for r in report.rows if r.format is not None} == set(chosen)
    assert small(**tokens(3)).shape == (3, 10)


def test_linears_are_timed_at_their_rows_and_the_fixed_share_on_token_inputs(tmp_path):
    m = model()
    policy = LatencyBudget(ratio=1.0, batch=1, cache_dir=str(tmp_path))  # tiny: dense is met
    plan = latency_plan(m, None, policy, tokens())
    assert {r["source"] for r in plan.rows} == {"measured"}
    assert {r["layer"] for r in plan.rows} == {"lin-i64-o256-b1@t16", "lin-i256-o64-b1@t16",
                                                "lin-i64-o10-b1@t1"}
    table = LatencyTable.load(policy.key(), tmp_path)
    assert all(v > 0 for r in plan.rows for v in table.entries[r["layer"]].values())
    shares = [v["fixed_share"] for k, v in table.entries.items() if k.startswith("model:")]
    assert len(shares) == 1 and 0.0 <= shares[0] < 1.0  # embedding, mean, adds: measured


def test_decompose_refuses_mixed_or_missing_inputs_in_one_line():
    m = model()
    policy = LatencyBudget(ratio=0.5, batch=2, measure=False, table=fake_table(m), fixed_ms=0.1)
    ids = tokens()
    mixed = ((ids["input_ids"],), {"attention_mask": ids["attention_mask"]})
    with pytest.raises(ConfigError, match="either positionally") as e:
        rankwise.decompose(m, rank=policy, linear_format="svd", example_inputs=mixed)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="example_inputs"):
        rankwise.decompose(m, rank=policy, linear_format="svd")
