"""What `profile_model` returns: per-layer rows (`ProfileRow`) and the whole-model
`ModelProfile` (totals, ratios against a dense baseline, measured latency), as JSON and as a rich
table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ProfileRow:
    """One conv/linear/factorized layer; `other` rows collect params outside such layers."""

    name: str
    type: str
    shape: tuple[int, ...] | None
    format: str | None
    rank: int | tuple[int, ...] | None
    params: int
    macs: int
    params_share: float = 0.0
    macs_share: float = 0.0


@dataclass
class ModelProfile:
    """Per-layer rows, totals (params, MACs/sample), ratios vs a dense baseline, latency (ms)."""

    rows: list[ProfileRow]
    params: int
    macs: int
    input_shape: tuple[int, ...]
    latency: dict[int, dict[str, float]] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    precision: str = "fp32"
    runtime: str = "torch"
    deploy: bool = False  # latency of the deployed copy (BN folded, weights in `precision`)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data."""
        rows = []
        for r in self.rows:
            d = asdict(r)
            d["shape"] = list(r.shape) if r.shape is not None else None
            d["rank"] = list(r.rank) if isinstance(r.rank, tuple) else r.rank
            rows.append(d)
        return {
            "input_shape": list(self.input_shape),
            "params": self.params,
            "macs": self.macs,
            "precision": self.precision,
            "runtime": self.runtime,
            "deploy": self.deploy,
            "latency_ms": {str(b): dict(v) for b, v in self.latency.items()},
            "baseline": None if self.baseline is None else {
                **self.baseline,
                "speedup": {str(b): v for b, v in self.baseline.get("speedup", {}).items()}},
            "rows": rows,
        }

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        table = Table(title=f"profile, input {tuple(self.input_shape)}, MACs per sample")
        for col in ("layer", "type", "shape", "format", "rank", "params", "MACs", "params %",
                    "MACs %"):
            num = col[0] in "pM"
            table.add_column(col, justify="right" if num else "left", no_wrap=num,
                             overflow="fold")
        for r in self.rows:
            fmt = r.format or ("dense" if r.shape is not None else "")
            table.add_row(r.name, r.type, _fmt_shape(r.shape), fmt,
                          "" if r.rank is None else str(r.rank), f"{r.params:,}", f"{r.macs:,}",
                          f"{100 * r.params_share:.1f}", f"{100 * r.macs_share:.1f}")
        table.add_section()
        table.add_row("total", "", "", "", "", f"{self.params:,}", f"{self.macs:,}", "100.0",
                      "100.0")
        lines = []
        if self.baseline:
            b = self.baseline
            lines.append(f"vs dense baseline: params ×{b['params_ratio']:.3f}, "
                         f"MACs ×{b['macs_ratio']:.3f}")
            for bs, s in b.get("speedup", {}).items():
                lines.append(f"  speedup at batch {bs}: {s:.2f}×")
        for bs, v in self.latency.items():
            where = self.precision if self.runtime == "torch" else \
                f"{self.precision}, {self.runtime}"
            where += ", deployed" if self.deploy else ""
            lines.append(f"latency batch {bs} ({where}): median {v['median_ms']:.3f} ms, "
                         f"IQR {v['iqr_ms']:.3f} ms")
        return Group(table, *lines)

    def print(self, console: Any = None) -> None:
        from rich.console import Console

        (console or Console()).print(self)


def _fmt_shape(shape: tuple[int, ...] | None) -> str:
    return "" if shape is None else "×".join(str(s) for s in shape)


__all__ = ["ModelProfile", "ProfileRow"]
