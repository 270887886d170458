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
candidates like any other linear. Cells build `RunConfig`s and call `rankwise.run` — the function
`rankwise train` calls — so the suite measures exactly what users run. A cell's identity is the
hash of every setting that changes its result (`cell_settings`); training run directories are
named by the hash of their `RunConfig` and reused only when their stored config matches.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rankwise.bench.benchmarks_md import load_result_files, register_section
from rankwise.bench.harness import Cell
from rankwise.bench.suite_runs import ensure_run, load_run_splits, run_config, train_seconds
from rankwise.errors import ConfigError

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
    """One suite: a dataset, models, a training recipe and compression levels.

    `train_options` / `data_options`: `TrainConfig` / `DataConfig` fields for every run;
    `method_options[key]`: the method's config fields, `method_train[key]`: `TrainConfig` fields
    for that method only (`key` is the suite's method name, e.g. "sfw" or "erank-reg:l1sv").
    """

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
    milestones: tuple[int, ...] = ()
    train_options: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    method_train: dict[str, dict[str, Any]] = field(default_factory=dict)
    threads: int | None = None

    def __post_init__(self) -> None:
        checks = [(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
                  (self.finetune >= 0, f"finetune must be >= 0, got {self.finetune}"),
                  (self.lr > 0, f"lr must be > 0, got {self.lr}"),
                  (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
                  (bool(self.seeds), "--seeds must name at least one seed"),
                  (bool(self.methods), "--methods must name at least one method"),
                  (self.limit_train is None or self.limit_train >= 1,
                   f"--limit-train must be >= 1, got {self.limit_train}"),
                  (self.limit_test is None or self.limit_test >= 1,
                   f"--limit-test must be >= 1, got {self.limit_test}"),
                  (self.threads is None or self.threads >= 1,
                   f"--threads must be >= 1, got {self.threads}")]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"bench suite {self.name}: {msg}")


QUICK = SuiteConfig(
    name="quick", dataset="fashion-mnist",
    models=(SuiteModel("smallcnn", "smallcnn"),
            SuiteModel("resnet20-w8", "resnet20", {"width": 8})),
    epochs=3, finetune=1, lr=0.05, limit_train=10000, limit_test=2000,
    # No crop/flip (28×28 grey images) and half an epoch of warm-up: ELRT's factorized linears
    # diverged at lr 0.05 without warm-up; every method gets the same recipe. bf16 autocast where
    # the CPU computes bf16 natively ("auto"; emulated bf16 is ~13× slower than fp32 on AVX2) +
    # channels_last: a training step at batch 128, 1 thread, interleaved against fp32 NCHW, was
    # 2.75× (smallcnn) and 1.42× (resnet20-w8) faster on the AVX-512-bf16 CPU of BENCHMARKS.md.
    train_options={"augment": False, "warmup_epochs": 0.5, "precision": "auto",
                   "channels_last": True},
    # SFW: a 3-epoch run is 234 steps, so the ball is tight (width 3) and lr 0.3 makes the
    # step sizes sum to ~10, the low-rank regime of the CIFAR-10 probe (BENCHMARKS.md, "Why SFW
    # did not make ResNets low-rank"). Measured on this suite: resnet20-w8 at 2× params kept
    # 80.4 % (width 10, lr 0.05: 18.1 %); smallcnn 86.2 % (88.7 %); lr 1.0 diverged on smallcnn.
    method_options={"trp": {"energy": 0.9, "nuclear_weight": 3e-4},
                    "sfw": {"constraint": "spectral-k-support", "k": 0.3, "width": 3.0,
                            "rescale": "gradient", "sweep": "none"}},
    method_train={"sfw": {"weight_decay": 0.0, "lr": 0.3}},
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
    method_options={f"erank-reg:{m}": {"measure": m, "weight": 1e-3}
                    for m in ("erank", "nuclear", "l1sv")},
)

# The CIFAR-10 paper-recipe suite is its own module (`rankwise.bench.cifar10`): long runs are
# listed as commands, run one by one, and collected into committed result files.
SUITES = {"quick": QUICK, "elrt-formats": ELRT_FORMATS, "regularizers": REGULARIZERS}


def cell_settings(cfg: SuiteConfig, method: str) -> dict[str, Any]:
    """Every suite setting that changes the result of a cell of `method` (+ rankwise version)."""
    import rankwise

    key = None if method in ("dense", "pretrain") else method
    return {"dataset": cfg.dataset, "epochs": cfg.epochs, "lr": cfg.lr,
            "batch_size": cfg.batch_size, "limit_train": cfg.limit_train,
            "limit_test": cfg.limit_test, "schedule": cfg.schedule,
            "milestones": list(cfg.milestones), "train_options": dict(cfg.train_options),
            "data_options": dict(cfg.data_options),
            "finetune": cfg.finetune if method == "pretrain" else None,
            "method_options": dict(cfg.method_options.get(key or "", {})),
            "method_train": dict(cfg.method_train.get(key or "", {})),
            "rankwise": rankwise.__version__}


def suite_cells(cfg: SuiteConfig) -> list[Cell]:
    """The cells of `cfg`, dense rows first (other rows reuse the dense run)."""
    cells = []
    for seed in cfg.seeds:
        for m in cfg.models:
            base = {"model": m.name, "label": m.label, "model_kwargs": dict(m.kwargs),
                    "seed": seed}
            for method in cfg.methods:
                levels = [None] if method == "dense" else list(cfg.levels)
                for level in levels:
                    tag = "dense" if level is None else f"{method}@{level:g}"
                    cells.append(Cell(f"{cfg.name}/{m.label}/{tag}/s{seed}",
                                      {**base, "method": method, "level": level,
                                       "settings": cell_settings(cfg, method)}))
    return cells


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
    if method in ("dense", "pretrain"):
        rc = run_config(cfg, p, "dense", runs)
    elif base in COMPRESSION_AWARE:
        # Trained dense-shaped once (variant options from cfg.method_options[method]), then
        # cut at each level without retraining.
        rc = run_config(cfg, p, base, runs, key=method)
    elif base == "elrt":
        fmt = method.split(":")[1] if ":" in method else "tucker2"
        rc = run_config(cfg, p, "elrt", runs, {"format": fmt, "rank": f"budget:params={level:g}"},
                        key=method if ":" in method else "elrt")
    else:
        raise ConfigError(f"unknown method {method!r} in suite {cfg.name}")
    ensure_run(rc)
    out = Path(rc.out)
    seconds = train_seconds(out)
    train, test = load_run_splits(out)
    shape = tuple(train.shape)
    model = rio.load(out)
    if method == "pretrain":
        model, seconds, info = _pretrain(cfg, model, train, test, level, out, seconds)
        result.update(info)
    elif base in COMPRESSION_AWARE:
        result["x_acc_before_compress"] = _measure(model, test, shape)["acc"]
        model, info = _compress(model, "channel", level, shape)
        result.update(info)
    dense_dir = Path(run_config(cfg, p, "dense", runs).out)
    ref = rio.load(dense_dir) if method != "dense" and (dense_dir / "model.json").exists() else None
    result.update(_measure(model, test, shape, ref))
    result["train_seconds"] = seconds
    return result


def _pretrain(cfg: SuiteConfig, model, train, test, level: float, dense_run: Path,
              dense_seconds: float | None):
    """Decompose the dense run at `level` (Tucker-2 + SVD) and fine-tune `cfg.finetune` epochs."""
    from rankwise.train import TrainConfig

    # The fine-tuning is redone with its cell: a fresh directory named after the dense run.
    out = dense_run.parent / f"pretrain@{level:g}-{dense_run.name}"
    shutil.rmtree(out, ignore_errors=True)
    # The fine-tuning recipe follows the suite's (same augmentation), at a tenth of its lr.
    train_cfg = TrainConfig(epochs=cfg.finetune, batch_size=cfg.batch_size, lr=cfg.lr / 10,
                            schedule="cosine", seed=0, quiet=True,
                            augment=cfg.train_options.get("augment", True),
                            precision=cfg.train_options.get("precision", "fp32"),
                            channels_last=cfg.train_options.get("channels_last", False),
                            num_threads=cfg.threads)
    from rankwise.train.pretrain import decompose_and_finetune

    shape = tuple(train.shape)
    if cfg.finetune == 0:
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


def save_results(results: list[dict[str, Any]], dest: Path, suite: str) -> Path:
    """One JSON per finished cell in `dest` (command, commit, machine, date, seed, settings,
    metrics): the files `rankwise bench report` renders."""
    from rankwise.bench.harness import write_json_atomic

    for r in results:
        if r.get("status") != "done":
            continue
        env = r.get("env") or {}
        name = Cell(r["key"]).filename
        write_json_atomic(Path(dest) / name, {
            "suite": suite, "key": r["key"], "command": env.get("command"),
            "commit": env.get("git_commit"), "machine": env.get("machine"),
            "date": env.get("date"), "seed": r["params"].get("seed"), "env": env,
            "params": r["params"], "metrics": r["result"]})
    return Path(dest)


@register_section("quick", order=10)
def section(results_root: Path) -> str:
    """The quick suite's BENCHMARKS.md section from `results_root/quick/*.json`."""
    from rankwise.bench.report import suite_header, summarize, to_markdown

    files = load_result_files(Path(results_root) / "quick")
    timings = "".join(main_job_line(r) for r in load_result_files(Path(results_root) / "main-job"))
    if not files:
        return "## Quick suite (CPU)\n\n" + timings if timings else ""
    results = [{"status": "done", "result": f["metrics"], "params": f.get("params", {}),
                "env": f.get("env", {})} for f in files]
    commands = sorted({f.get("command") or "?" for f in files})
    text = "## Quick suite (CPU)\n\n" + timings + suite_header("quick", results)
    text += "Command: " + "; ".join(f"`{c}`" for c in commands) + "\n\n"
    return text + to_markdown(summarize(results))


def main_job_line(r: dict[str, Any]) -> str:
    """One line for a timed run of the README's main job (`results/main-job/*.json`: command,
    wall_s, where, machine, threads, date, commit)."""
    return (f"The README's main job from a clean clone ({r.get('where', '')}) took "
            f"**{float(r['wall_s']) / 60:.1f} min** wall: `{r.get('command')}` on "
            f"{r.get('machine')}, {r.get('threads')}, {r.get('date')}, commit "
            f"{r.get('commit')}.\n\n")
