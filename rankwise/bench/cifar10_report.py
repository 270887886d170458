"""The `cifar10` section of BENCHMARKS.md, rendered from `results/cifar10/*.json` only.

One table per model: every suite row in order, with our accuracy, our drop against our own
dense row, the paper's accuracy and drop beside it (`papers.paper_row`, matched by model, method
and scheme; `bench --compare trp` prints the paper's full table), params, MACs reduction
(rankwise counting), FLOPs reduction (TRP code counting), latency and stored size. A row without
a result file is listed as **pending** with its command, never with numbers. Then the sweep of
rank removed without retraining (SGD vs SFW) per model, and where the numbers came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rankwise.bench.benchmarks_md import load_result_files, register_section
from rankwise.bench.cifar10 import (
    LEGACY_SCHEDULE,
    SCHEDULES,
    SUITE,
    BenchRow,
    schedule_of,
    suite_rows,
)
from rankwise.bench.cifar10_evidence import SFW_EVIDENCE, TRP_ENERGY_EVIDENCE
from rankwise.bench.papers import paper_row

LATENCIES = ("", "_bf16", "_ort")  # result-file suffixes of the three deployments timed
DEPLOYMENTS = ("eager fp32", "eager bf16", "ONNX Runtime fp32")
HEADER = """## CIFAR-10: TRP, SFW and ELRT on ResNet-20 / ResNet-56 — `rankwise bench cifar10`

Standard CIFAR ResNets (He et al. 2016: BasicBlock, option-A zero-padded identity shortcuts);
the TRP reference code's "ResNet-56" uses Bottleneck blocks, so its ResNet-56 numbers are shown
for reference only (†). Paper: TRP README (Xu et al. 2020). Δ = accuracy − dense accuracy of
the same source (ours against our dense row, the paper's against its own baseline). MACs ×:
rankwise counting (every conv and linear, per sample); FLOPs ×: the TRP code's counting (convs
only, FC excluded). Latency ×: dense time ÷ this row's time at batch 1, both deployed the same
way, the two models timed in alternating blocks in one process (threads: the result file's
`latency_threads`; > 1× = faster than our dense model deployed the same way): eager PyTorch
(`to_deploy`: BN folded, channels-last) with fp32 / bf16 weights, and ONNX Runtime on the fp32
graph (`rankwise export --format onnx`); "(emulated)": the collecting CPU had no bf16
instructions, so its bf16 times are of emulated kernels. Below each table: the dense model's
own times, which differ between the three far more than most rows differ from dense. Size:
stored bytes (fp32 weights, or the pipeline's entropy-coded file).
"""


def _f(v: Any, spec: str = ".2f", dash: str = "–") -> str:
    return dash if v is None else format(v, spec)


def _signed(v: float | None) -> str:
    return "–" if v is None else f"{v:+.2f}"


def _ratio(dense: float | None, v: float | None) -> str:
    return "–" if not dense or not v else f"{dense / v:.2f}"


def _latency(m: dict[str, Any]) -> str:
    """Speedup over the dense model timed in the same interleaved blocks: eager fp32 / eager
    bf16 / ONNX Runtime fp32."""
    cells = [_ratio(m.get(f"dense_latency{p}_ms"), m.get(f"latency{p}_ms")) for p in LATENCIES]
    if m.get("bf16_native") is False and cells[1] != "–":
        cells[1] += " (emulated)"
    return "–" if set(cells) == {"–"} else " / ".join(cells)


def _dense_times(m: dict[str, Any]) -> list[str]:
    """One line: the dense model's batch-1 times in the three deployments (its own file)."""
    cells = [f"{_f(m.get(f'dense_latency{p}_ms'), '.3f')} ms {n}"
             for p, n in zip(LATENCIES, DEPLOYMENTS, strict=True) if m.get(f"dense_latency{p}_ms")]
    if not cells:
        return []
    threads = m.get("latency_threads")
    return ["", f"Dense model at batch 1 ({threads} thread{'s' if threads != 1 else ''}): "
            + ", ".join(cells) + "."]


def _by_row(results_root: Path) -> dict[str, dict[str, Any]]:
    folder = Path(results_root) / SUITE
    if not folder.is_dir():
        return {}
    return {r["row"]: r for r in load_result_files(folder) if r.get("suite") == SUITE}


def _paper_cells(row: BenchRow) -> tuple[str, str]:
    method = "dense" if row.method == "dense" else row.method
    p = paper_row(row.model, method, row.scheme)
    if p is None:
        return "–", "–"
    mark = "" if p.comparable else " †"
    return f"{p.acc:.2f}{mark}", _signed(None if p.drop is None else -p.drop)


def _pending(row: BenchRow) -> str:
    """A row without results: the paper's cells (its numbers, not ours) and the run's name."""
    pa, pd = _paper_cells(row)
    return f"| {row.label} | **pending** | | {pa} | {pd} | | | | | | `{row.run}` |"


def model_table(model: str, rows: Sequence[BenchRow], results: dict[str, dict[str, Any]],
                title: str | None = None) -> list[str]:
    """Markdown lines of one model's table (Δ against the dense row among `rows`)."""
    dense_row = next((r for r in rows if r.method == "dense"), None)
    dense = results.get(dense_row.name, {}).get("metrics", {}) if dense_row else {}
    lines = [f"### {title or model}", "",
             "| row | acc % | Δ ours | paper % | Δ paper | params | MACs × | FLOPs × (TRP) "
             "| latency × fp32 / bf16 / ORT | size KB | schedule |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        res = results.get(row.name)
        if res is None:
            lines.append(_pending(row))
            continue
        m = res["metrics"]
        acc = m.get("acc")
        d = None if acc is None or dense.get("acc") is None or row.method == "dense" \
            else acc - dense["acc"]
        size = m.get("bytes") if row.post == "compress" else \
            (4 * m["params"] if m.get("params") else None)
        sched = res.get("schedule") or {}
        sched_text = ", ".join(filter(None, (
            f"{sched.get('epochs')} ep {sched.get('schedule')}", sched.get("precision")))) \
            if sched.get("epochs") else "–"
        pa, pd = _paper_cells(row)
        lines.append(
            f"| {row.label} | {_f(acc)} | {_signed(d)} | {pa} | {pd} | "
            f"{_f(m.get('params'), ',')} | {_ratio(dense.get('macs'), m.get('macs'))} | "
            f"{_ratio(dense.get('flops_reference'), m.get('flops_reference'))} | "
            f"{_latency(m)} | {_f(None if size is None else size / 1024, '.1f')} | "
            f"{sched_text} |")
    lines += _dense_times(dense)
    if any(r.name not in results for r in rows):
        lines += ["", "Pending rows: their commands are printed by `rankwise bench cifar10 "
                  f"--action pending --models {rows[0].name.split('-')[0]} --schedule "
                  f"{schedule_of(rows[0])}`."]
    return lines


def sweep_table(model: str, rows: Sequence[BenchRow],
                results: dict[str, dict[str, Any]]) -> list[str]:
    """Accuracy (%) vs fraction of every conv's rank removed, no retraining, one column per run."""
    sweeps = [(r, results[r.name]["metrics"].get("sweep") or []) for r in rows
              if r.post == "sweep" and r.name in results]
    if not sweeps:
        return []
    ratios = sorted({s["ratio"] for _, rs in sweeps for s in rs})
    head = " | ".join(r.label.replace(", truncated (no retraining)", "") for r, _ in sweeps)
    lines = ["", f"Sweep of rank removed without retraining ({model}, every conv truncated in "
             "its channel matricization; accuracy %):", "",
             f"| rank removed | {head} |", "|---" * (len(sweeps) + 1) + "|"]
    for ratio in ratios:
        cells = []
        for _, rs in sweeps:
            hit = next((s for s in rs if s["ratio"] == ratio), None)
            cells.append(_f(hit and hit.get("acc")))
        lines.append(f"| {ratio:g} | " + " | ".join(cells) + " |")
    return lines


def provenance(results: dict[str, dict[str, Any]]) -> list[str]:
    """Commits, machines and dates of the result files."""
    if not results:
        return []
    commits = sorted({str(r.get("commit")) for r in results.values()})
    machines = sorted({str(r.get("machine")) for r in results.values()})
    dates = sorted(str(r.get("date")) for r in results.values())
    return ["", f"Results: {len(results)} files under `results/{SUITE}/` (commits "
            f"{', '.join(commits)}; machines {', '.join(machines)}; runs finished "
            f"{dates[0]} – {dates[-1]}). Regenerate: `rankwise bench cifar10 --action "
            "collect --schedule S` for each schedule above, then `rankwise bench report`."]


PAPER_DENSE = 91.74
PAPER_TRPNU_DROP = 1.24


def claims(rows: Sequence[BenchRow], results: dict[str, dict[str, Any]]) -> list[str]:
    """The issue's claims for one model and schedule, each read off the result files: holds /
    does not hold, with the numbers."""
    def metrics(r: BenchRow) -> dict[str, Any]:
        return results.get(r.name, {}).get("metrics", {})

    dense_row = next((r for r in rows if r.method == "dense"), None)
    dense = metrics(dense_row) if dense_row else {}
    if dense.get("acc") is None:
        return []
    out = []
    gap = PAPER_DENSE - dense["acc"]
    if rows[0].model == "resnet20":
        out.append(f"- dense within 1 point of the paper's {PAPER_DENSE}: "
                   f"{'holds' if gap <= 1.0 else 'does not hold'} ({dense['acc']:.2f}, "
                   f"{-gap:+.2f}).")
    paper_decomp = next((r for r in rows if r.method == "decompose+ft" and r.scheme == "channel"
                         and "at_macs_of" not in r.notes and metrics(r).get("acc") is not None),
                        None)
    for r in rows:
        m = metrics(r)
        if r.method != "trp+nu" or r.scheme != "channel" or m.get("acc") is None:
            continue
        speed = dense["flops_reference"] / m["flops_reference"]
        drop = dense["acc"] - m["acc"]
        ok = speed >= 2.0 and drop <= PAPER_TRPNU_DROP + 0.5
        text = (f"- {r.label.strip()}: ≥ 2× FLOPs with a drop ≤ {PAPER_TRPNU_DROP + 0.5:.2f}: "
                f"{'holds' if ok else 'does not hold'} ({speed:.2f}×, −{drop:.2f})")
        sources = {r.name, *r.needs}  # a retrain row has its TRP run's MACs
        matched = next((x for x in rows if x.notes.get("at_macs_of") in sources
                        and metrics(x).get("acc") is not None), None)
        decomp = matched or paper_decomp
        if decomp is not None:
            d = metrics(decomp)
            d_speed = dense["flops_reference"] / d["flops_reference"]
            # at equal MACs, or against a decomposition at least as compressed as this row
            beats = m["acc"] > d["acc"] and (matched is not None or speed >= d_speed * 0.97)
            where = "at the same MACs" if matched is not None else "at the paper's FLOPs"
            tie = m["acc"] == d["acc"]
            text += (f"; beats decomposition + fine-tuning {where} ({d['acc']:.2f} at "
                     f"{d_speed:.2f}×): {'yes' if beats else 'no, a tie' if tie else 'no'}")
        out.append(text + ".")
    sgd = next((metrics(r).get("sweep") for r in rows if r.method == "sgd-sweep"), None)
    for r in rows:
        sweep = metrics(r).get("sweep")
        if r.method != "sfw" or not sweep or not sgd:
            continue
        base = {s["ratio"]: s["acc"] for s in sgd}
        above = [s["ratio"] for s in sweep if s["ratio"] in base and s["acc"] > base[s["ratio"]]]
        below = [s["ratio"] for s in sweep if s["ratio"] in base and s["acc"] < base[s["ratio"]]]
        verdict = "holds" if not below else ("holds from " + f"{min(above):g} on" if above and
                                             max(below) < min(above) else "does not hold")
        out.append(f"- {r.label.replace(', truncated (no retraining)', '')} curve above SGD's: "
                   f"{verdict} (above at {', '.join(f'{x:g}' for x in above) or 'no ratio'}; "
                   f"below at {', '.join(f'{x:g}' for x in below) or 'no ratio'}).")
    out += speed_claim(rows, results)
    return ["", "Claims, read off this table:", "", *out] if out else []


def speed_claim(rows: Sequence[BenchRow], results: dict[str, dict[str, Any]]) -> list[str]:
    """How many compressed rows (≥ 1.05× fewer MACs than dense, timed) run faster than dense
    at batch 1, in each deployment of `LATENCIES`, with the best speed-up."""
    found = [results[r.name]["metrics"] for r in rows if r.name in results]
    dense_macs = next((results[r.name]["metrics"].get("macs") for r in rows
                       if r.method == "dense" and r.name in results), None)
    if not dense_macs:
        return []
    fewer = [m for m in found if m.get("macs") and dense_macs / m["macs"] >= 1.05]
    parts = []
    for suffix, name in zip(LATENCIES, DEPLOYMENTS, strict=True):
        ratios = [m[f"dense_latency{suffix}_ms"] / m[f"latency{suffix}_ms"] for m in fewer
                  if m.get(f"latency{suffix}_ms") and m.get(f"dense_latency{suffix}_ms")]
        if ratios:
            parts.append(f"{name} {sum(x > 1.0 for x in ratios)} of {len(ratios)} (best "
                         f"{max(ratios):.2f}×)")
    return [f"- compressed rows faster than dense at batch 1: {'; '.join(parts)}."] if parts \
        else []


def _schedule_text(schedule: str) -> str:
    args = SCHEDULES[schedule]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    return (f"{schedule}: {flags['--epochs']} epochs {flags['--schedule']}, lr {flags['--lr']}, "
            f"wd {flags['--wd']}, batch {flags['--batch-size']}")


def section(results_root: Path, rows: Sequence[BenchRow] | None = None) -> str:
    """The whole section (Markdown) from `results_root/cifar10/*.json`: one table per model and
    schedule. By default the default schedule's rows (unfinished ones listed as pending) and,
    below them, the rows of the legacy schedule that have results."""
    results = _by_row(Path(results_root))
    if rows is None:
        rows = suite_rows() + [r for r in suite_rows(schedule=LEGACY_SCHEDULE)
                               if r.name in results]
    lines = [HEADER]
    groups = dict.fromkeys((r.model, schedule_of(r)) for r in rows)
    for model, schedule in groups:
        mine = [r for r in rows if r.model == model and schedule_of(r) == schedule]
        title = f"{model}, {_schedule_text(schedule)}"
        lines += model_table(model, mine, results, title=title)
        lines += sweep_table(title, mine, results)
        lines += claims(mine, results)
        lines.append("")
    lines += ["### Settings marked (ours) and the evidence for them", "",
              TRP_ENERGY_EVIDENCE.strip(), "", SFW_EVIDENCE.strip(), ""]
    lines += provenance({k: v for k, v in results.items() if k in {r.name for r in rows}})
    return "\n".join(lines).rstrip() + "\n"


@register_section(SUITE, order=20)
def render_section(results_root: Path) -> str:
    """BENCHMARKS.md hook: the default rows (ResNet-20 and -56, seed 0)."""
    return section(results_root)


__all__ = ["model_table", "provenance", "render_section", "section", "speed_claim",
           "sweep_table"]
