"""Published numbers, for `rankwise bench --compare PAPER` (sources in ../shared/docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Each entry: model, dataset, method, baseline top-1 %, method top-1 %, compression note, source.
PAPERS: dict[str, dict[str, Any]] = {
    "trp": {
        "title": "Xu et al., Trained Rank Pruning (IJCAI 2020), reference README",
        "rows": [
            ("resnet20", "cifar10", "TRP+Nu channel (NC)", 91.74, 90.50, "params 0.27M→0.10M, FLOPs 2.17×"),
            ("resnet20", "cifar10", "TRP+Nu spatial (VH)", 91.74, 90.62, "params 0.08M, FLOPs 2.84×"),
            ("resnet20", "cifar10", "TRP+Nu ND", 91.74, 90.88, "params 0.14M, FLOPs 2.04×"),
            ("resnet32", "cifar10", "TRP+Nu channel (NC)", 92.26, 91.40, "FLOPs 2.2×"),
            ("resnet32", "cifar10", "TRP+Nu spatial (VH)", 92.26, 91.39, "FLOPs 3.4×"),
            ("resnet56*", "cifar10", "TRP+Nu", 93.14, 92.77, "FLOPs −56.7 % (*Bottleneck ResNet-56)"),
            ("resnet50", "imagenet", "TRP+Nu channel", 75.90, 74.06, "FLOPs 1.80×"),
            ("resnet50", "imagenet", "TRP+Nu channel", 75.90, 72.69, "FLOPs 2.23×"),
        ],
    },
    "survey": {
        "title": "Ou et al. 2024, Table 1 (ResNet-32, CIFAR-10)",
        "rows": [
            ("resnet32", "cifar10", "Tucker", None, 87.70, "5×"),
            ("resnet32", "cifar10", "TT", None, 88.3, "4.8×"),
            ("resnet32", "cifar10", "TR", None, 90.6, "5×"),
            ("resnet32", "cifar10", "BTD", None, 91.1, "5×"),
            ("resnet32", "cifar10", "GKPD", None, 91.5, "5×"),
            ("resnet32", "cifar10", "HT", None, 89.9, "1.6×"),
            ("resnet32", "cifar10", "STT", None, 91.0, "9×"),
        ],
    },
    "sfw": {
        "title": "Zimmer, Spiegel, Pokutta 2022 (arXiv 2205.11921): per-experiment tables not found",
        "rows": [
            ("resnet56", "cifar10", "SFW spectral-K-support", None, None,
             "qualitative: accuracy-vs-ratio curve without retraining above SGD and nuclear penalty"),
        ],
    },
    "elrt": {
        "title": "Sui et al. (arXiv 2401.10341): result numbers not found (no public code)",
        "rows": [],
    },
}


def compare_markdown(paper: str, ours: list[dict[str, Any]] | None = None) -> str:
    """The paper's published rows as Markdown, followed by our rows for the same models if given."""
    if paper not in PAPERS:
        raise KeyError(f"unknown paper {paper!r}; choose one of {sorted(PAPERS)}")
    entry = PAPERS[paper]
    lines = [f"**{entry['title']}**", "",
             "| model | dataset | method | baseline % | method % | compression |",
             "|---|---|---|---|---|---|"]
    for model, data, method, base, acc, note in entry["rows"]:
        b = "–" if base is None else f"{base:.2f}"
        a = "–" if acc is None else f"{acc:.2f}"
        lines.append(f"| {model} | {data} | {method} | {b} | {a} | {note} |")
    if ours:
        lines += ["", "**rankwise (ours)**", "",
                  "| group | method | level | acc % | Δ vs dense | params × | MACs × |",
                  "|---|---|---|---|---|---|---|"]
        for r in ours:
            d, px, mx = (r.get(k, "–") for k in ("d_acc", "params_x", "macs_x"))
            lines.append(f"| {r['group']} | {r['method']} | {r['level']} | {r['acc']:.2f} | "
                         f"{d} | {px} | {mx} |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PaperRow:
    """A published number matched to our rows by `(model, method, scheme)`.

    `acc` top-1 %; `baseline` the paper's dense accuracy (so `drop = baseline − acc`, points);
    `speedup` FLOPs reduction × as the paper counts it; `comparable` False when the paper's
    model differs from ours (the reference code's Bottleneck "ResNet-56")."""

    paper: str
    model: str
    method: str
    scheme: str | None
    acc: float
    baseline: float | None = None
    speedup: float | None = None
    params: str | None = None
    comparable: bool = True
    note: str = ""

    @property
    def drop(self) -> float | None:
        """Baseline − method accuracy (points), None for a baseline row."""
        return None if self.baseline is None else self.baseline - self.acc


PAPER_ROWS: tuple[PaperRow, ...] = (
    PaperRow("trp", "resnet20", "dense", None, 91.74, note="TRP README baseline"),
    PaperRow("trp", "resnet20", "trp+nu", "channel", 90.50, 91.74, 2.17, "0.10M"),
    PaperRow("trp", "resnet20", "trp+nu", "spatial", 90.62, 91.74, 2.84, "0.08M"),
    PaperRow("trp", "resnet56", "dense", None, 93.14, comparable=False,
             note="reference code's Bottleneck ResNet-56, not the BasicBlock one"),
    PaperRow("trp", "resnet56", "trp+nu", None, 92.77, 93.14, 1.0 / (1.0 - 0.567),
             comparable=False, note="FLOPs −56.7 %; Bottleneck ResNet-56, scheme not stated"),
)
"""The rows of `PAPERS` that have a counterpart in the CIFAR-10 suite (TRP README numbers)."""


def paper_row(model: str, method: str, scheme: str | None) -> PaperRow | None:
    """The published row for our `(model, method, scheme)`; a paper row without a scheme matches
    any scheme of its model and method. None when the paper has no such number."""
    for r in PAPER_ROWS:
        if r.model == model and r.method == method and r.scheme in (scheme, None):
            return r
    return None
