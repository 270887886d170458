"""`DecomposeReport`: what `rankwise.decompose` did to each layer (formats, ranks, params and
MACs before/after, why a layer stayed dense), as plain data, a rich table and Markdown."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rankwise.layers.base import Rank


@dataclass
class LayerRow:
    """One visited layer: dense weight shape, chosen format/rank (None when kept dense), costs."""

    name: str
    type: str
    dense_shape: tuple[int, ...]
    format: str | None
    rank: Rank | None
    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    note: str = ""


@dataclass
class DecomposeReport:
    """What `decompose` did, one row per visited layer, plus whole-model totals.

    MACs are per sample (see `rankwise.analysis.profile`); None when no example inputs were given.
    """

    rows: list[LayerRow]
    format: str | None = None
    linear_format: str | None = None
    policy: str = ""
    model_params_before: int = 0
    model_params_after: int = 0
    model_macs_before: int | None = None
    model_macs_after: int | None = None

    @property
    def totals(self) -> dict[str, Any]:
        """Counts and whole-model params/MACs before and after, with their ratios."""
        def ratio(a: int | None, b: int | None) -> float | None:
            return None if a is None or not b else a / b

        return {
            "layers": len(self.rows),
            "factorized": sum(r.format is not None for r in self.rows),
            "kept_dense": sum(r.format is None for r in self.rows),
            "params_before": self.model_params_before,
            "params_after": self.model_params_after,
            "params_ratio": ratio(self.model_params_after, self.model_params_before),
            "macs_before": self.model_macs_before,
            "macs_after": self.model_macs_after,
            "macs_ratio": ratio(self.model_macs_after, self.model_macs_before),
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data."""
        rows = []
        for r in self.rows:
            d = asdict(r)
            d["dense_shape"] = list(r.dense_shape)
            d["rank"] = list(r.rank) if isinstance(r.rank, tuple) else r.rank
            rows.append(d)
        return {"format": self.format, "linear_format": self.linear_format,
                "policy": self.policy, "totals": self.totals, "rows": rows}

    def _cells(self, r: LayerRow) -> list[str]:
        def n(v: int | None) -> str:
            return "?" if v is None else f"{v:,}"

        return [r.name, r.type, "×".join(map(str, r.dense_shape)), r.format or "dense",
                "" if r.rank is None else str(r.rank), n(r.params_before), n(r.params_after),
                n(r.macs_before), n(r.macs_after), r.note]

    _HEAD = ("layer", "type", "dense shape", "format", "rank", "params", "params after", "MACs",
             "MACs after", "note")

    def _summary(self) -> str:
        t = self.totals
        s = (f"{t['factorized']} of {t['layers']} layers factorized; params "
             f"{t['params_before']:,} → {t['params_after']:,} (×{t['params_ratio']:.3f})")
        if t["macs_ratio"] is not None:
            s += f"; MACs {t['macs_before']:,} → {t['macs_after']:,} (×{t['macs_ratio']:.3f})"
        return s

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        table = Table(title=f"decompose: format={self.format}, linear={self.linear_format}, "
                            f"rank={self.policy}")
        for h in self._HEAD:
            num = h.startswith(("params", "MACs"))
            table.add_column(h, justify="right" if num else "left", no_wrap=num,
                             overflow="fold", ratio=3 if h == "note" else None)
        for r in self.rows:
            table.add_row(*self._cells(r))
        return Group(table, self._summary())

    def print(self, console: Any = None) -> None:
        from rich.console import Console

        (console or Console()).print(self)

    def to_markdown(self) -> str:
        """A GitHub-flavoured markdown table followed by the totals line."""
        lines = ["| " + " | ".join(self._HEAD) + " |", "|" + "---|" * len(self._HEAD)]
        for r in self.rows:
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in self._cells(r)) + " |")
        return "\n".join(lines) + "\n\n" + self._summary() + "\n"
