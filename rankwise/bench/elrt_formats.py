"""ELRT format study support: the same model built in each factorized format at equal params.

`elrt_format_table` only builds models (no training): the bench owner adds training/accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rankwise.errors import RankwiseError
from rankwise.methods.elrt import ELRTConfig, build_model


def _ranks_summary(ranks: list[Any]) -> str:
    """`"min … max (k layers)"` of per-layer ranks (tuples compared by their product)."""
    if not ranks:
        return "none"

    def size(r: Any) -> int:
        out = 1
        for x in (r if isinstance(r, (tuple, list)) else (r,)):
            out *= int(x)
        return out

    lo, hi = min(ranks, key=size), max(ranks, key=size)
    return f"{lo} … {hi} ({len(ranks)} layers)"


def elrt_format_table(model_name: str, formats: Sequence[str] = ("tucker2", "channel", "spatial",
                                                                 "cp"),
                      target_params_ratio: float = 0.5, input_shape: tuple[int, ...] | None = None,
                      allocation: str = "uniform", skip_first_conv: bool = True,
                      skip_classifier: bool = True, seed: int = 0,
                      **model_kwargs: Any) -> list[dict[str, Any]]:
    """One row per format: the ELRT model of `model_name` (built on meta, factor init on CPU) at
    `ParamsBudget(target_params_ratio)` with `allocation` ("uniform" | "greedy").

    Row keys: `format`, `params`, `dense_params`, `params_ratio`, `macs` (per sample),
    `dense_macs`, `macs_ratio`, `factorized` (layers), `kept_dense`, `ranks` (min … max
    summary), `rank_list` (per factorized layer), `error` (None, or why the format failed)."""
    rows: list[dict[str, Any]] = []
    for fmt in formats:
        cfg = ELRTConfig(format=fmt, rank=f"budget:params={target_params_ratio}", orth_weight=0.0,
                         skip_first_conv=skip_first_conv, skip_classifier=skip_classifier,
                         budget_allocation=allocation, seed=seed)
        try:
            _, report = build_model(model_name, cfg, input_shape, **model_kwargs)
        except RankwiseError as e:
            rows.append({"format": fmt, "error": str(e)})
            continue
        t = report.totals
        ranks = [r.rank for r in report.rows if r.format is not None]
        rows.append({"format": fmt, "params": t["params_after"], "dense_params": t["params_before"],
                     "params_ratio": t["params_ratio"], "macs": t["macs_after"],
                     "dense_macs": t["macs_before"], "macs_ratio": t["macs_ratio"],
                     "factorized": t["factorized"], "kept_dense": t["kept_dense"],
                     "ranks": _ranks_summary(ranks),
                     "rank_list": [list(r) if isinstance(r, tuple) else r for r in ranks],
                     "error": None})
    return rows


__all__ = ["elrt_format_table"]
