"""`collect(runs_dir, results_dir)`: finished `cifar10` suite runs → one result JSON per row.

A row is collected when every step's marker file exists (`BenchRow.steps`, `Step.done`). Its
file `RESULTS/<row name>.json` holds: suite, row, model, method, scheme, label, seed, `command`
(the command lines as recorded in the run's config.json under "command"/"argv" when present,
else the suite's definition; `command_source` says which), `commit` (the run's, else the
collecting checkout's; `commit_source`), `machine`, `date` (when the run's marker was written,
UTC) and `collected` (now), `schedule` (epochs / schedule / lr from config.json), and `metrics`:

- `acc` (top-1 %, the saved model evaluated here in fp32 on the run's test split), `params`,
  `macs` (per sample, rankwise counting: every conv/linear, FC included, `analysis.profile`),
  `flops_reference` (the TRP code's counting: every `nn.Conv2d` — inside factorized layers
  too — `weight.numel() × output pixels`, FC excluded; `reference_flops`), `latency_ms` and
  `latency_bf16_ms` (batch 1, median, deployed in fp32 and in bf16 with BN folded, the
  collecting machine's threads) with `dense_latency_ms` / `dense_latency_bf16_ms`, the same
  model and schedule's dense run timed in the same interleaved blocks (`latency_vs_dense`),
  unless `latency=False`; `latency_ort_ms` / `dense_latency_ort_ms` the same pair exported to
  ONNX (float32) and run by ONNX Runtime (`io.onnx_file`), or `latency_ort_error` saying why
  not (the `export` extra not installed, an export failure);
- sweep rows: `sweep`, one `{ratio, acc, params, macs}` per ratio, from the step's sweep.json;
- compress rows: `stages` (stage, acc, params, bytes stored) and `bytes` of the last stage.

A file whose `source` fingerprint (marker file path + mtime + size) and `metrics_version`
are unchanged is not rewritten, so re-collecting keeps committed files byte-identical; bumping
`METRICS_VERSION` (when a metric's definition changes) re-collects every row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankwise.bench.cifar10 import (
    RESULTS_DIR,
    RUNS_DIR,
    SUITE,
    BenchRow,
    schedule_of,
    step_done,
    suite_rows,
)
from rankwise.errors import ConfigError

MODEL_POSTS = {"model": "", "elrt": "", "trp": "factorized", "decompose": ""}
METRICS_VERSION = 3  # 2: latency of the deployed models (BN folded, bf16 weights); 3: + ORT


@torch.no_grad()
def reference_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs as the TRP reference code counts them: Σ over every `nn.Conv2d` run by one forward
    pass on zeros `(1, *input_shape)` of `weight.numel() · H_out · W_out` (= per output pixel
    `n·(c/g)·kh·kw`; NC `c·kh·kw·r + r·n`, VH `c·r·kh + n·r·kw` after factorization), FC and
    everything else excluded."""
    total = 0
    handles = []

    def hook(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += mod.weight.numel() * out.shape[-2] * out.shape[-1]

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        p = next(model.parameters(), None)
        x = torch.zeros(1, *[int(s) for s in input_shape],
                        device=p.device if p is not None else "cpu")
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read JSON ({e}); rerun the step or delete it") from e


def _run_config(runs_dir: Path, row: BenchRow) -> dict[str, Any]:
    """config.json of the row's training run (or of the run it builds on), {} if none."""
    for name in (*[s.out for s in row.steps], *row.needs):
        path = runs_dir / name / "config.json"
        if path.is_file():
            return _read_json(path)
    return {}


def _commands(runs_dir: Path, row: BenchRow, config: dict[str, Any]) -> tuple[list[str], str]:
    recorded = config.get("command") or config.get("argv")
    if recorded and len(row.steps) == 1:
        text = recorded if isinstance(recorded, str) else " ".join(map(str, recorded))
        return [text], "config.json"
    return [s.command(runs_dir) for s in row.steps], "suite definition"


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _fingerprint(runs_dir: Path, row: BenchRow) -> str:
    parts = []
    for s in row.steps:
        st = (runs_dir / s.out / s.done).stat()
        parts.append(f"{s.out}/{s.done}:{int(st.st_mtime)}:{st.st_size}")
    return ";".join(parts)


def _test_data(config: dict[str, Any]) -> Any:
    from rankwise.data import load_dataset

    spec = config.get("dataset") or {"name": SUITE}
    kwargs = dict(spec.get("kwargs") or {})
    if "shape" in kwargs:
        kwargs["shape"] = tuple(kwargs["shape"])
    data = load_dataset(spec["name"], False, **kwargs)
    limit = spec.get("limit_test")
    return data.subset(slice(0, int(limit))) if limit else data


def latency_vs_dense(model: nn.Module, dense: nn.Module, input_shape: Sequence[int],
                     min_run_time: float = 0.2, rounds: int = 3) -> dict[str, Any]:
    """Batch-1 median latency (ms) of `model` and of `dense` on zeros `(1, *input_shape)`, each
    deployed as users run it (`io.export_precision.to_deploy`: BN folded, channels_last, weights
    in fp32 and then in bf16), each pair timed in alternating ABBA blocks
    (`speed_timing.interleaved_latency`) so that load from other processes hits both alike:
    `dense_latency_ms / latency_ms` is the speedup the table shows. Then the same pair as
    float32 ONNX graphs in ONNX Runtime (`analysis.latency.onnx_runner`), `*_ort_ms`.
    `bf16_native`: whether this CPU has bf16 instructions (else its bf16 times are emulated)."""
    from rankwise.analysis.latency import onnx_runner
    from rankwise.analysis.precision import native_bf16
    from rankwise.bench.speed_timing import interleaved_latency
    from rankwise.io.export_precision import to_deploy

    x = torch.zeros(1, *[int(v) for v in input_shape])
    out: dict[str, Any] = {"latency_threads": torch.get_num_threads(),
                           "bf16_native": native_bf16("cpu")}
    pairs: list[tuple[str, Any]] = [
        (suffix, lambda p=precision: [to_deploy(dense, p), to_deploy(model, p)])
        for suffix, precision in (("", "fp32"), ("_bf16", "bf16"))]
    pairs.append(("_ort", lambda: [onnx_runner(m, tuple(input_shape), x) for m in (dense, model)]))
    for suffix, build in pairs:
        try:
            deployed = build()
        except ConfigError as e:  # ONNX Runtime missing, or the graph does not export
            out[f"latency{suffix}_error"] = str(e)
            continue
        d, m = interleaved_latency(deployed, [x, x], min_run_time, rounds)
        out[f"latency{suffix}_ms"] = m["median_ms"]
        out[f"dense_latency{suffix}_ms"] = d["median_ms"]
    return out


def model_metrics(model: nn.Module, test_data: Any, input_shape: Sequence[int],
                  dense: nn.Module | None = None) -> dict[str, Any]:
    """acc (%), params, macs (rankwise), flops_reference of a loaded model, and its latency
    against `dense` (`latency_vs_dense`) when given."""
    from rankwise.analysis.accuracy import evaluate
    from rankwise.analysis.profile import count

    model = model.float().eval()
    _, params, macs = count(model, input_shape)
    out: dict[str, Any] = {"acc": 100.0 * evaluate(model, test_data)["acc"], "params": params,
                           "macs": macs, "flops_reference": reference_flops(model, input_shape)}
    if dense is not None:
        out.update(latency_vs_dense(model, dense.float().eval(), input_shape))
    return out


def _sweep_rows(path: Path) -> list[dict[str, Any]]:
    doc = _read_json(path)
    runs = doc.get("runs") or {}
    if not runs:
        raise ConfigError(f"{path} holds no sweep rows; rerun the sweep")
    rows = next(iter(runs.values()))
    keep = ("ratio", "acc", "params", "macs", "compression", "speedup")
    return [{k: (100.0 * r[k] if k == "acc" and r.get(k) is not None else r.get(k))
             for k in keep} for r in rows]


def _sweep_file(runs_dir: Path, row: BenchRow) -> Path:
    """The last step's sweep.json (a `rankwise sweep --out` folder)."""
    return runs_dir / row.steps[-1].out / "sweep.json"


def _compress_metrics(path: Path) -> dict[str, Any]:
    stages = _read_json(path).get("stages") or []
    if not stages:
        raise ConfigError(f"{path} holds no stages; rerun `rankwise compress`")
    rows = []
    for s in stages:
        stored = next((s.get(k) for k in ("bytes_coded", "bytes_int8", "bytes_fp32")
                       if s.get(k) is not None), None)
        acc = s.get("acc")
        rows.append({"stage": s.get("stage"), "acc": None if acc is None else 100.0 * acc,
                     "params": s.get("params"), "macs": s.get("macs"), "bytes": stored})
    last = rows[-1]
    return {"acc": last["acc"], "params": last["params"], "macs": last["macs"],
            "bytes": last["bytes"], "bytes_fp32_first": stages[0].get("bytes_fp32"),
            "stages": rows}


def dense_reference(dense_dir: Path | None, config: dict[str, Any]) -> tuple[nn.Module, str]:
    """The dense model a row's latency is timed against, and where it came from: the saved
    model of the dense run (`dense_dir`), or, when that run is not in the runs directory (a
    fresh clone holds only its committed result file), the row's architecture as its
    config.json names it, freshly initialised. Batch-1 latency depends on the layers' shapes,
    not on their values, so both give the same dense time."""
    from rankwise.io.model_file import load
    from rankwise.models import build_model

    if dense_dir is not None:
        return load(dense_dir), "dense run"
    spec = config.get("model") or {}
    if not spec.get("name"):
        raise ConfigError("cannot time against dense: the run's config.json names no model")
    return build_model(spec["name"], seed=0, **(spec.get("kwargs") or {})), "dense architecture"


def row_metrics(runs_dir: Path, row: BenchRow, config: dict[str, Any],
                dense_dir: Path | None = None, latency: bool = True) -> dict[str, Any]:
    """The metrics of one finished row (see the module docstring); with `latency`, latency
    against `dense_reference(dense_dir, config)`."""
    from rankwise.io.model_file import load

    shape = tuple(config.get("input_shape") or (3, 32, 32))
    if row.post == "compress":
        return _compress_metrics(runs_dir / row.run / "report.json")
    dense, source = dense_reference(dense_dir, config) if latency else (None, None)
    if row.post == "sweep":
        base = runs_dir / (row.needs[0] if row.needs else row.steps[0].out)
        out = model_metrics(load(base), _test_data(config), shape, dense)
        out["sweep"] = _sweep_rows(_sweep_file(runs_dir, row))
    elif row.post in MODEL_POSTS:
        path = runs_dir / row.run / MODEL_POSTS[row.post]
        out = model_metrics(load(path), _test_data(config), shape, dense)
    else:
        raise ConfigError(f"cifar10 row {row.name}: unknown post-processing {row.post!r}")
    if source is not None:
        out["latency_dense"] = source
    return out


def result_record(runs_dir: Path, row: BenchRow, dense_dir: Path | None = None,
                  latency: bool = True) -> dict[str, Any]:
    """The result JSON of one finished row (`row_metrics`)."""
    from rankwise.bench.harness import environment

    config = _run_config(runs_dir, row)
    env = environment()
    cmds, source = _commands(runs_dir, row, config)
    train = config.get("train") or {}
    marker = runs_dir / row.steps[-1].out / row.steps[-1].done
    return {
        "suite": SUITE, "row": row.name, "model": row.model, "method": row.method,
        "scheme": row.scheme, "label": row.label, "post": row.post, "seed": row.seed,
        "command": cmds, "command_source": source,
        "commit": config.get("git_commit") or config.get("commit") or env["git_commit"],
        "commit_source": "config.json" if config.get("git_commit") or config.get("commit")
        else "collecting checkout",
        "machine": config.get("machine") or env["machine"],
        "threads": train.get("num_threads"), "date": _utc(marker.stat().st_mtime),
        "collected": env["date"], "torch": env["torch"],
        "schedule": {k: train.get(k) for k in ("epochs", "schedule", "lr", "milestones",
                                               "weight_decay", "batch_size", "precision")},
        "source": _fingerprint(runs_dir, row), "metrics_version": METRICS_VERSION,
        "metrics": _finite(row_metrics(runs_dir, row, config, dense_dir, latency)),
    }


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def collect(runs_dir: Path = RUNS_DIR, results_dir: Path = RESULTS_DIR,
            rows: Sequence[BenchRow] | None = None, latency: bool = True) -> list[Path]:
    """Write `results_dir/<row>.json` for every finished row whose file is missing or stale;
    returns the paths written. Unfinished rows are skipped (the section lists them pending)."""
    from rankwise.io.atomic import atomic_write_json

    runs_dir, results_dir = Path(runs_dir), Path(results_dir)
    rows = suite_rows() if rows is None else rows
    dense_of = {(r.model, schedule_of(r), r.seed): runs_dir / r.run for r in rows
                if r.method == "dense" and all(step_done(s, runs_dir) for s in r.steps)}
    written = []
    for row in rows:
        if not all(step_done(s, runs_dir) for s in row.steps):
            continue
        path = results_dir / f"{row.name}.json"
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except json.JSONDecodeError:
                old = {}
            if (old.get("source") == _fingerprint(runs_dir, row)
                    and old.get("metrics_version") == METRICS_VERSION):
                continue
        results_dir.mkdir(parents=True, exist_ok=True)
        dense = dense_of.get((row.model, schedule_of(row), row.seed))
        atomic_write_json(path, result_record(runs_dir, row, dense, latency))
        written.append(path)
    return written


__all__ = ["collect", "latency_vs_dense", "model_metrics", "reference_flops", "result_record",
           "row_metrics"]
