"""`speed` suite: measured CPU latency of factorized vs dense models and layers, and the wall time
of the decompositions against tensorly's own functions.

Three kinds of cells (`Cell.params["kind"]`), all run by `run_speed_cell`:

- "model": a random-init model (resnet18/50 at 224×224, resnet20/56 at 32×32) is cut to a
  whole-model MACs target `1/ratio` (`rank.MacsBudget`, 2×/3×/4×) in one conv format; the fc stays
  dense, 1×1 convs get "channel" (surgery's rule). channel/spatial/tucker2 go through
  `rankwise.decompose`; for "cp" the same budget allocation (`rank.allocate_budget` over the
  layers' `spectra`/`cost`) picks the ranks and the layers are built with `from_spec` (fresh
  weights), because CP-ALS on every layer takes hours and latency does not depend on the values.
  The *achieved* MACs and params ratios are counted with `profile.count`, not the target.
- "layer": one 3×3 c→c conv (stride 1, pad 1) at H×W and its factorized form at the largest rank
  whose MACs are ≤ dense/ratio (`rank_for_macs`); also the latency of each sub-conv (why a format
  falls short: e.g. CP's depthwise convs do little work per byte).
- "decomp": wall seconds to decompose every conv of a random-init model (ranks from
  `rank_for_macs` at 2×): ours (`FORMAT.from_dense`: SVD, HOSVD, CP-ALS with `cp_iters` sweeps)
  vs the reference (numpy SVD, `tensorly.decomposition.partial_tucker` on modes [0, 1] with no
  HOOI sweep = HOSVD, `tensorly.decomposition.parafac` with the same rank and sweeps, tol 0).
  channel covers all convs; spatial/tucker2/cp only the k×k convs (1×1 convs are a channel SVD in
  every format). CP may time a subset (`include`) and extrapolate by Σ n·c·kh·kw·R, the per-sweep
  work of ALS; the extrapolation is reported as such.

Latency: `interleaved_latency` (eval, `no_grad`, `torch.set_num_threads(threads)` for the cell):
dense and factorized run in alternating blocks (ABBA...), median over blocks in ms, so load from
other processes hits both alike (`profile.measure_latency` times one model at a time).
`quick=True`: ImageNet models at 112×112, shorter timing, CP decomposition on layer1 only.

The suite is split by concern: `speed_ranks` (ranks, MACs-budget factorization), `speed_timing`
(interleaved timer), `speed_runners` (the three cell kinds above), `speed_report` (Markdown), and
`speed_alloc` / `speed_alloc_report`: the "alloc" cells, the latency-budget allocator against the
MACs-budget allocator on whole models in fp32 and bf16 (see `speed_alloc`).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import torch

from rankwise.bench.harness import Cell, environment, run_cells, write_json_atomic
from rankwise.bench.speed_alloc import alloc_cells, run_alloc_cell, write_alloc_results
from rankwise.bench.speed_alloc_report import alloc_markdown
from rankwise.bench.speed_ranks import (
    BATCHES,
    CIFAR_MODELS,
    CONV_FORMATS,
    CP_SUBSET,
    IMAGENET_MODELS,
    LAYERS,
    RATIOS,
    budget_factorize,
    rank_for_macs,
    threads_context,
)
from rankwise.bench.speed_report import speed_markdown as _cells_markdown
from rankwise.bench.speed_runners import RUNNERS
from rankwise.bench.speed_timing import interleaved_latency
from rankwise.errors import ConfigError

KINDS = ("alloc", "layer", "model", "decomp")


def _cells(quick: bool, threads: int | None = None) -> list[Cell]:
    """All cells of the suite: single layers, CIFAR models, ImageNet models, decomposition time.

    `threads`: torch intra-op threads for every cell (default: `torch.get_num_threads()` now).
    `quick`: ImageNet models at 112×112 instead of 224×224, `min_run_time` 0.05 s instead of
    0.2 s, and CP decomposition timed on ResNet-50's layer1 only, 2 sweeps.
    """
    t = int(threads or torch.get_num_threads())
    timing = {"threads": t, "min_run_time": 0.05 if quick else 0.2, "rounds": 2,
              "batches": list(BATCHES), "timer": "interleaved-blocks"}
    side = 112 if quick else 224
    cells = []
    for c, hw in LAYERS:
        for fmt in CONV_FORMATS:
            for r in RATIOS:
                cells.append(Cell(f"layer/{c}x{hw}/{fmt}/x{r:g}", {
                    "kind": "layer", "channels": c, "hw": hw, "kernel": 3, "format": fmt,
                    "ratio": r, **timing}))
    for name in ("resnet18", *CIFAR_MODELS, "resnet50"):  # slowest last
        imagenet = name in IMAGENET_MODELS
        shape = [3, side, side] if imagenet else [3, 32, 32]
        for r in RATIOS:
            for fmt in CONV_FORMATS:
                cells.append(Cell(f"model/{name}@{shape[1]}/{fmt}/x{r:g}", {
                    "kind": "model", "model": name, "model_kw": {},
                    "num_classes": 1000 if imagenet else 10, "input_shape": shape,
                    "format": fmt, "ratio": r, "seed": 0, **timing}))
    for fmt in CONV_FORMATS:
        for impl in ("rankwise", "reference"):
            include = None
            if fmt == "cp":
                include = ["layer1.*"] if quick else list(CP_SUBSET)
            cells.append(Cell(f"decomp/resnet50/{fmt}/{impl}", {
                "kind": "decomp", "model": "resnet50", "model_kw": {}, "num_classes": 1000,
                "input_shape": [3, side, side], "format": fmt, "impl": impl, "ratio": 2.0,
                "include": include, "cp_iters": 2 if quick else 5, "seed": 0, "threads": t}))
    return cells


def speed_cells(quick: bool, threads: int | None = None,
                kinds: tuple[str, ...] | None = None) -> list[Cell]:
    """All cells of the suite, allocator comparison first (`kinds` picks a subset of `KINDS`).

    `threads`: torch intra-op threads for the layer/model/decomp cells (default: now's count);
    the alloc cells carry their own 1- and 2-thread rows. `quick`: ImageNet models at 112×112,
    `min_run_time` 0.05 s instead of 0.2 s, CP decomposition timed on ResNet-50's layer1 only.
    """
    kinds = tuple(kinds or KINDS)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ConfigError(f"speed suite: unknown kind(s) {bad}; choose from {KINDS}")
    cells = alloc_cells(quick) if "alloc" in kinds else []
    return cells + [c for c in _cells(quick, threads) if c.params["kind"] in kinds]


def run_speed_cell(cell: Cell) -> dict[str, Any]:
    """Run one cell of `speed_cells` (dispatch on `params["kind"]`); returns JSON-able data."""
    p = cell.params
    if p.get("kind") == "alloc":
        return run_alloc_cell(p)
    if p.get("kind") not in RUNNERS:
        raise ConfigError(f"speed cell {cell.key}: unknown kind {p.get('kind')!r}; "
                          f"expected one of {sorted(KINDS)}")
    with threads_context(p["threads"]):
        out = RUNNERS[p["kind"]](p)
        out["threads"] = torch.get_num_threads()
    return out


def speed_markdown(results: list[dict[str, Any]]) -> str:
    """Markdown for BENCHMARKS.md from `run_cells` records of `speed_cells`."""
    alloc = [r for r in results if r.get("result", {}).get("kind") == "alloc"
             or r.get("key", "").startswith("alloc/")]
    rest = [r for r in results if r not in alloc]
    parts = [alloc_markdown(alloc)] if alloc else []
    if rest or not alloc:
        parts.append(_cells_markdown(rest))
    return "\n".join(parts)


def run_speed_suite(out_dir: str | Path, quick: bool = False, threads: int | None = None,
                    resume: bool = True, cells: list[Cell] | None = None,
                    kinds: tuple[str, ...] | None = None,
                    results_dir: str | Path | None = "results/speed",
                    command: str = "rankwise bench speed", match: str | None = None) -> Path:
    """Run (resuming) the speed cells into `out_dir/cells/`, rewriting `out_dir/speed.md` and
    `out_dir/speed.json` after every cell; alloc results also go to
    `results_dir/allocators.json` (None: not written). `match`: only cells whose key matches
    this glob (e.g. `"alloc/resnet50@224/b8/t1/*"`). Returns the path of `speed.md`."""
    out_dir = Path(out_dir)
    cells = speed_cells(quick, threads, kinds) if cells is None else cells
    if match is not None:
        cells = [c for c in cells if fnmatch.fnmatchcase(c.key, match)]
        if not cells:
            raise ConfigError(f"speed suite: no cell key matches {match!r}; keys look like "
                              "'alloc/resnet50@224/b8/t1/fp32' or 'model/resnet50@224/tucker2/x2'")
    md, js = out_dir / "speed.md", out_dir / "speed.json"
    results: list[dict[str, Any]] = []
    for i, cell in enumerate(cells):
        rec = run_cells([cell], run_speed_cell, out_dir, resume=resume, progress=False,
                        command=command)[0]
        results.append(rec)
        print(f"[{i + 1}/{len(cells)}] {cell.key}: {rec['status']} ({rec['seconds']:.1f} s)",
              flush=True)
        write_json_atomic(js, {"env": environment(command), "results": results})
        tmp = md.with_suffix(".md.tmp")
        tmp.write_text(speed_markdown(results))
        tmp.replace(md)
        if results_dir is not None and cell.params.get("kind") == "alloc":
            write_alloc_results(Path(results_dir), results, command)
    return md


__all__ = ["BATCHES", "CIFAR_MODELS", "CONV_FORMATS", "CP_SUBSET", "IMAGENET_MODELS", "KINDS",
           "LAYERS", "RATIOS", "budget_factorize", "interleaved_latency", "rank_for_macs",
           "run_speed_cell", "run_speed_suite", "speed_cells", "speed_markdown"]
