"""After TRP training: decompose the targets and report both cost countings.

`trp_decompose` cuts the targets with `ValueThreshold(t)` (or `decompose_rank`) and counts
params/MACs the rankwise way (all params, MACs per sample incl. the FC) and the reference way
(FLOPs per output pixel × pixels, convs only, FC excluded; with `counting="reference"` only
stride-1 targets are decomposed, as the reference code does). For the ND scheme a spectral
policy (threshold, energy) picks each layer's rank as the max over its filters, as the
reference's ND decomposition does (`PerFilterMax`). `report_markdown` renders it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rankwise.layers.decoupled_conv import DecoupledConv2d, filter_matricize
from rankwise.layers.shapes import ConvSpec
from rankwise.linalg.grouped import svd_dtype
from rankwise.linalg.svd import svdvals
from rankwise.methods.trp_config import TRPConfig
from rankwise.methods.trp_ops import trp_flops
from rankwise.methods.trp_targets import find_targets
from rankwise.options import to_dict
from rankwise.surgery.rank import RankPolicy
from rankwise.surgery.trace import as_example


def decompose_targets(model: nn.Module, cfg: TRPConfig) -> set[str]:
    """The targets the post-training decomposition cuts (stride-1 only for "reference")."""
    targets = set(find_targets(model, cfg))
    if cfg.counting == "reference":
        targets = {n for n in targets
                   if tuple(getattr(model.get_submodule(n), "stride", (1, 1))) == (1, 1)}
    return targets


class PerFilterMax(RankPolicy):
    """The reference's ND rule: a layer's rank is the max over its output filters of `inner`'s
    rank of each filter's spectrum (`W[i].view(c/g, kh·kw)`), not `inner` on the pooled one.

    `table` pairs each layer's pooled spectrum (what `decompose` passes to `select`, from
    `DecoupledConv2d.spectra`) with that layer's per-filter maximum; other spectra fall back
    to `inner`."""

    def __init__(self, inner: RankPolicy, table: list[tuple[torch.Tensor, int]]) -> None:
        self.inner, self.table = inner, table

    def select(self, spectra: Any, max_rank: tuple[int, ...], shapes: Any = None
               ) -> tuple[int, ...]:
        for pooled, r in self.table:
            if pooled.shape == spectra[0].shape and torch.equal(pooled, spectra[0]):
                return (max(1, min(r, int(max_rank[0]))),)
        return self.inner.select(spectra, max_rank, shapes)

    def __str__(self) -> str:
        return f"{self.inner} (max over filters)"


def per_filter_policy(model: nn.Module, names: set[str], inner: RankPolicy) -> PerFilterMax:
    """`PerFilterMax` for the ND targets `names` of `model`."""
    table = []
    for name in sorted(names):
        mod = model.get_submodule(name)
        if not isinstance(mod, nn.Conv2d):
            continue
        spec = ConvSpec.from_conv(mod)
        w = mod.weight.detach()
        per = svdvals(filter_matricize(w).to(svd_dtype(w.dtype)))  # (n, min(c/g, kh·kw))
        m = DecoupledConv2d.max_rank(spec)
        r = max(inner.select([s], m)[0] for s in per)
        table.append((DecoupledConv2d.spectra(w, spec)[0], int(r)))
    return PerFilterMax(inner, table)


def trp_decompose(model: nn.Module, cfg: TRPConfig, input_shape: tuple[int, ...] | None,
                  train_ranks: dict[str, int] | None = None, *, example: Any = None
                  ) -> tuple[nn.Module, dict[str, Any]]:
    """`(factorized copy of model, report)`; the report holds the config, the policy, per-layer
    rows (`train_energy_rank`, rank, params/MACs/TRP FLOPs before → after) and `counting`.
    MACs and FLOPs are counted on zeros of `input_shape`, or on `example` (inputs as
    `decompose` takes them, e.g. token ids by keyword) when `input_shape` is None."""
    from rankwise.surgery.decompose import decompose
    from rankwise.surgery.rank import ValueThreshold, parse_rank

    train_ranks = train_ranks or {}
    targets = decompose_targets(model, cfg)
    policy = (parse_rank(cfg.decompose_rank) if cfg.decompose_rank
              else ValueThreshold(cfg.value_threshold))
    if cfg.scheme == "nd" and isinstance(policy, RankPolicy) and policy.needs_spectra \
            and not policy.is_global:
        policy = per_filter_policy(model, targets, policy)
    example = None if input_shape is not None else as_example(example, None, model)
    fact, rep = decompose(model, format=cfg.scheme, rank=policy, input_shape=input_shape,
                          example_inputs=example, include=lambda name, _m: name in targets)
    flops = trp_flops(model, rep.rows, input_shape, example=example)
    if example is not None:  # the report states the first example tensor's shape
        args, kwargs = example
        first = next((t for t in (*args, *kwargs.values())
                      if isinstance(t, torch.Tensor) and t.dim()), None)
        input_shape = () if first is None else tuple(int(v) for v in first.shape[1:])
    t = rep.totals
    layers = [{"name": r.name, "shape": list(r.dense_shape), "train_energy_rank":
               train_ranks.get(r.name), "format": r.format, "rank": r.rank,
               "params_before": r.params_before, "params_after": r.params_after,
               "macs_before": r.macs_before, "macs_after": r.macs_after,
               "trp_flops_before": flops["per_layer"].get(r.name, (None, None))[0],
               "trp_flops_after": flops["per_layer"].get(r.name, (None, None))[1],
               "note": r.note} for r in rep.rows]
    macs_speedup = t["macs_before"] / t["macs_after"] if t["macs_after"] else None
    counts = {"rankwise": {"params_before": t["params_before"], "params_after": t["params_after"],
                           "macs_before": t["macs_before"], "macs_after": t["macs_after"],
                           "speedup": macs_speedup},
              "reference": {"params_before": t["params_before"],
                            "params_after": t["params_after"],
                            "flops_before": flops["flops_before"],
                            "flops_after": flops["flops_after"], "speedup": flops["speedup"]}}
    report = {"method": "trp", "config": to_dict(cfg), "policy": str(policy),
              "input_shape": list(input_shape), "counting": counts,
              "speedup": counts[cfg.counting]["speedup"], "layers": layers}
    return fact, report


def report_markdown(report: dict[str, Any]) -> str:
    """The TRP report as a Markdown table (one row per visited layer) plus totals."""
    def n(v: Any) -> str:
        return "–" if v is None else f"{v:,}" if isinstance(v, int) else str(v)

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.2f} %"

    lines = [f"# TRP report ({report['config']['scheme']}, decomposition {report['policy']})", "",
             "| layer | shape | train energy rank | rank | params | MACs | TRP FLOPs | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["layers"]:
        lines.append(
            f"| {r['name']} | {'×'.join(map(str, r['shape']))} | {n(r['train_energy_rank'])} | "
            f"{n(r['rank']) if r['format'] else 'dense'} | {n(r['params_before'])} → "
            f"{n(r['params_after'])} | {n(r['macs_before'])} → {n(r['macs_after'])} | "
            f"{n(r['trp_flops_before'])} → {n(r['trp_flops_after'])} | {r['note']} |")
    c, a = report["counting"], report.get("accuracy") or {}
    sp = {k: "–" if v["speedup"] is None else f"{v['speedup']:.2f}×" for k, v in c.items()}
    rw, ref = c["rankwise"], c["reference"]
    lines += ["", "| counting | params | MACs / FLOPs | speedup |", "|---|---|---|---|",
              f"| rankwise (all params, MACs/sample incl. FC) | {n(rw['params_before'])}"
              f" → {n(rw['params_after'])} | {n(rw['macs_before'])} → "
              f"{n(rw['macs_after'])} | {sp['rankwise']} |",
              f"| reference (per output pixel × pixels, convs only) | "
              f"{n(ref['params_before'])} → {n(ref['params_after'])} | "
              f"{n(ref['flops_before'])} → {n(ref['flops_after'])} | {sp['reference']} |", ""]
    if a:
        lines += [f"Test accuracy: dense {pct(a.get('dense'))}, factorized "
                  f"{pct(a.get('factorized'))}"
                  + (f", retrained {pct(a['retrained'])}" if a.get("retrained") is not None
                     else ""), ""]
    return "\n".join(lines)


__all__ = ["PerFilterMax", "decompose_targets", "per_filter_policy", "report_markdown",
           "trp_decompose"]
