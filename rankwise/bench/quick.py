"""Method suites: dense, pre-train (decompose + fine-tune), TRP, SFW, ELRT side by side.

Every method is compared at the same **whole-model parameter budget** (`ParamsBudget(level)`:
params after / params before) and the same epoch budget:

- `dense`: `epochs` epochs of SGD (the reference row).
- `pretrain@L`: the dense run decomposed (Tucker-2 convs, SVD linears) at budget L, then
  `finetune` epochs at a small lr. Its training time is the dense run's plus the fine-tuning.
- `trp@L`, `sfw@L`: one compression-aware run each (`epochs` epochs), then decomposed at budget
  L (channel convs, SVD linears) **without retraining** — they compress at any ratio.
- `elrt@L`: trained from scratch in Tucker-2 form at budget L (`epochs` epochs).

The first conv is never factorized (TRP's and ELRT's convention), classifier layers are
candidates like any other linear. Cells call the public CLI (`rankwise train`) so the suite
measures exactly what users run; finished training runs are reused on resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rankwise.bench.harness import Cell

LEVELS = (0.5, 0.25)
# Methods that train a dense-shaped model which is then decomposed at each level, no retraining.
COMPRESSION_AWARE = ("trp", "sfw", "nuclear-penalty", "erank-reg")


@dataclass(frozen=True)
class SuiteModel:
    label: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SuiteConfig:
    """One suite: a dataset, models, a training recipe and compression levels."""

    name: str
    dataset: str
    models: tuple[SuiteModel, ...]
    epochs: int
    finetune: int
    lr: float
    batch_size: int = 128
    limit_train: int | None = None
    limit_test: int | None = None
    levels: tuple[float, ...] = LEVELS
    seeds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = ("dense", "pretrain", "trp", "sfw", "elrt")
    schedule: str = "cosine"
    milestones: str = ""
    extra_train_args: tuple[str, ...] = ()  # e.g. ("--synthetic-size", "256")
    method_args: dict[str, tuple[str, ...]] = field(default_factory=dict)
    threads: int | None = None


QUICK = SuiteConfig(
    name="quick", dataset="fashion-mnist",
    models=(SuiteModel("smallcnn", "smallcnn"),
            SuiteModel("resnet20-w8", "resnet20", {"width": 8})),
    epochs=3, finetune=1, lr=0.05, limit_train=10000, limit_test=2000,
    # No crop/flip (28×28 grey images) and half an epoch of warm-up: ELRT's factorized linears
    # diverged at lr 0.05 without warm-up; every method gets the same recipe.
    extra_train_args=("--no-augment", "--warmup", "0.5"),
    method_args={"trp": ("--trp-energy", "0.9", "--trp-nuclear-weight", "3e-4"),
                 "sfw": ("--sfw-constraint", "spectral-k-support", "--sfw-k", "0.3",
                         "--sfw-width", "10", "--sfw-rescale", "gradient", "--wd", "0",
                         "--sfw-sweep", "none")},
)

CIFAR10 = SuiteConfig(
    name="cifar10", dataset="cifar10",
    models=(SuiteModel("resnet20", "resnet20"), SuiteModel("resnet56", "resnet56")),
    epochs=164, finetune=10, lr=0.1, schedule="step", milestones="82,122",
    method_args=QUICK.method_args,
)

# ELRT's format comparison at equal params (issue: the paper's systematic study of formats).
ELRT_FORMATS = dataclasses.replace(
    QUICK, name="elrt-formats", models=(QUICK.models[1],), levels=(0.25,),
    methods=("dense", "elrt:tucker2", "elrt:channel", "elrt:spatial", "elrt:cp"),
)

# The survey's finding "effective rank beats l1-type sparsity measures", as a training
# regularizer: the same model regularized by each measure, then cut at the same budgets.
REGULARIZERS = dataclasses.replace(
    QUICK, name="regularizers", models=(QUICK.models[1],),
    methods=("dense", "erank-reg:erank", "erank-reg:nuclear", "erank-reg:l1sv"),
    method_args={f"erank-reg:{m}": ("--erank-reg-measure", m, "--erank-reg-weight", "1e-3")
                 for m in ("erank", "nuclear", "l1sv")},
)

SUITES = {"quick": QUICK, "cifar10": CIFAR10, "elrt-formats": ELRT_FORMATS,
          "regularizers": REGULARIZERS}


def suite_cells(cfg: SuiteConfig) -> list[Cell]:
    """The cells of `cfg`, dense rows first (other rows reuse the dense run)."""
    cells = []
    for seed in cfg.seeds:
        for m in cfg.models:
            base = {"model": m.name, "label": m.label, "model_kwargs": m.kwargs, "seed": seed}
            for method in cfg.methods:
                levels = [None] if method == "dense" else list(cfg.levels)
                for level in levels:
                    tag = "dense" if level is None else f"{method}@{level:g}"
                    cells.append(Cell(f"{cfg.name}/{m.label}/{tag}/s{seed}",
                                      {**base, "method": method, "level": level}))
    return cells


def _train_argv(cfg: SuiteConfig, p: dict[str, Any], method: str, out: Path,
                extra: tuple[str, ...] = (), key: str | None = None) -> list[str]:
    """`rankwise train` argv of a cell; `key` selects `cfg.method_args` (default `method`)."""
    argv = ["train", "--model", p["model"], "--dataset", cfg.dataset, "--out", str(out),
            "--epochs", str(cfg.epochs), "--lr", str(cfg.lr), "--batch-size", str(cfg.batch_size),
            "--schedule", cfg.schedule, "--seed", str(p["seed"]), "--quiet", "--method", method]
    if cfg.milestones:
        argv += ["--milestones", cfg.milestones]
    if "width" in p["model_kwargs"]:
        argv += ["--width", str(p["model_kwargs"]["width"])]
    if cfg.limit_train:
        argv += ["--limit-train", str(cfg.limit_train)]
    if cfg.limit_test:
        argv += ["--limit-test", str(cfg.limit_test)]
    if cfg.threads:
        argv += ["--num-threads", str(cfg.threads)]
    method_args = cfg.method_args.get(key or method, ())
    return argv + list(cfg.extra_train_args) + list(method_args) + list(extra)


def ensure_run(argv: list[str], out: Path) -> dict[str, Any]:
    """Run `rankwise train argv` unless `out/summary.json` exists; resume a killed run."""
    from rankwise.cli import main

    summary = out / "summary.json"
    if not summary.exists():
        if (out / "checkpoint.pt").exists():
            argv = [*argv, "--resume"]
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        if code != 0 or not summary.exists():
            raise RuntimeError(f"`rankwise {' '.join(argv)}` failed with exit code {code}")
    return json.loads(summary.read_text())


def train_seconds(run: Path) -> float:
    """Total training time of a run: the sum of its epochs' `time_s` in `metrics.jsonl`."""
    total = 0.0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "epoch":
            total += float(event.get("time_s", 0.0))
    return total


def _load_splits(run: Path) -> tuple[Any, Any]:
    """The train/test splits a finished run used (its `config.json` dataset spec)."""
    from rankwise.cli.train import load_split

    spec = json.loads((run / "config.json").read_text())["dataset"]
    return (load_split(spec, True, limit=spec.get("limit_train")),
            load_split(spec, False, limit=spec.get("limit_test")))


def _measure(model: torch.nn.Module, test, input_shape: tuple[int, ...],
             ref: torch.nn.Module | None = None) -> dict[str, Any]:
    """Test accuracy (%), params, MACs and batch-1 latency (ms).

    With a dense `ref`, both are timed in interleaved blocks (`speed.interleaved_latency`) and
    `latency_ref_ms` is stored too, so the speed-up survives background load.
    """
    from rankwise.analysis.profile import example_input, profile_model
    from rankwise.bench.speed import interleaved_latency
    from rankwise.train import evaluate

    model.eval()
    acc = evaluate(model, test, batch_size=512)["acc"]
    prof = profile_model(model, input_shape, latency=False)
    x = example_input(model, input_shape, batch=1)
    out = {"acc": 100.0 * acc, "params": prof.params, "macs": prof.macs}
    if ref is None:
        out["latency_ms"] = interleaved_latency([model], [x], 0.2, 2)[0]["median_ms"]
    else:
        ref_lat, lat = interleaved_latency([ref, model], [x, x], 0.2, 2)
        out.update(latency_ms=lat["median_ms"], latency_ref_ms=ref_lat["median_ms"])
    return out


def _compress(model: torch.nn.Module, fmt: str, level: float,
              input_shape: tuple[int, ...]) -> tuple[torch.nn.Module, dict[str, Any]]:
    from rankwise import decompose
    from rankwise.surgery.rank import ParamsBudget

    model, report = decompose(model, format=fmt, rank=ParamsBudget(level), linear_format="svd",
                              skip_first_conv=True, input_shape=input_shape)
    return model, {"factorized_layers": sum(1 for r in report.rows if r.format and
                                            not (r.note or "").startswith("kept dense"))}


def run_suite_cell(cfg: SuiteConfig, root: Path, cell: Cell) -> dict[str, Any]:
    """Train/compress/measure one cell; training runs live in `root/runs` and are shared."""
    from rankwise import io as rio

    p = cell.params
    method, level = p["method"], p["level"]
    runs = Path(root) / "runs" / p["label"] / f"s{p['seed']}"
    result: dict[str, Any] = {"group": f"{cfg.dataset}/{p['label']}", "method": method,
                              "level": "-" if level is None else f"{level:g}",
                              "seed": p["seed"], "epochs": cfg.epochs}
    base = method.split(":")[0]
    extra: tuple[str, ...] = ()
    if method in ("dense", "pretrain"):
        out, train_method = runs / "dense", "dense"
    elif base in COMPRESSION_AWARE:
        # Trained dense-shaped once (variant flags from cfg.method_args[method]), then cut at
        # each level without retraining.
        out, train_method = runs / method.replace(":", "-"), base
    elif base == "elrt":
        fmt = method.split(":")[1] if ":" in method else "tucker2"
        out = runs / (f"elrt@{level:g}" if fmt == "tucker2" else f"elrt-{fmt}@{level:g}")
        train_method = "elrt"
        extra = ("--elrt-format", fmt, "--elrt-rank", f"budget:params={level:g}")
    else:
        raise ValueError(f"unknown method {method!r} in suite {cfg.name}")
    key = None if method in ("dense", "pretrain") else method
    ensure_run(_train_argv(cfg, p, train_method, out, extra, key=key), out)
    seconds = train_seconds(out)
    train, test = _load_splits(out)
    shape = tuple(train.shape)
    model = rio.load(out)
    if method == "pretrain":
        model, seconds, info = _pretrain(cfg, model, train, test, level, runs, seconds)
        result.update(info)
    elif base in COMPRESSION_AWARE:
        result["x_acc_before_compress"] = _measure(model, test, shape)["acc"]
        model, info = _compress(model, "channel", level, shape)
        result.update(info)
    dense_dir = runs / "dense"
    ref = rio.load(dense_dir) if method != "dense" and (dense_dir / "model.json").exists() else None
    result.update(_measure(model, test, shape, ref))
    result["train_seconds"] = seconds
    return result


def _pretrain(cfg: SuiteConfig, model, train, test, level: float, runs: Path,
              dense_seconds: float | None):
    """Decompose the dense run at `level` (Tucker-2 + SVD) and fine-tune `cfg.finetune` epochs."""
    from rankwise.train import TrainConfig

    out = runs / f"pretrain@{level:g}"
    # The fine-tuning recipe follows the suite's (same augmentation), at a tenth of its lr.
    train_cfg = TrainConfig(epochs=cfg.finetune, batch_size=cfg.batch_size, lr=cfg.lr / 10,
                            schedule="cosine", seed=0, quiet=True,
                            augment="--no-augment" not in cfg.extra_train_args,
                            num_threads=cfg.threads)
    try:
        from rankwise.train.pretrain import decompose_and_finetune
    except ImportError:  # pragma: no cover - only while the pre-train API is missing
        decompose_and_finetune = None
    shape = tuple(train.shape)
    if decompose_and_finetune is None or cfg.finetune == 0:
        model, info = _compress(model, "tucker2", level, shape)
        return model, dense_seconds, info
    model, report = decompose_and_finetune(
        model, train, test, format="tucker2", rank=f"budget:params={level:g}",
        epochs=cfg.finetune, train_cfg=train_cfg, out_dir=out, linear_format="svd",
        skip_first_conv=True, input_shape=shape)
    after = float(report.get("acc_after_decompose", float("nan")))
    extra = {"x_acc_after_decompose": 100.0 * after}
    ft = report.get("finetune_seconds") or 0.0
    return model, (dense_seconds or 0.0) + ft, extra
