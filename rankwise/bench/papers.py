"""Published numbers, for `rankwise bench --compare PAPER` (sources in ../shared/docs/methods.md)."""

from __future__ import annotations

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
