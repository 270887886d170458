"""`cifar10` suite: the TRP/SFW/ELRT comparison on CIFAR-10 ResNet-20/56, as data.

Each `BenchRow` names the CLI commands that produce it (`rankwise train` first, then, for some
rows, `rankwise decompose` / `rankwise sweep` / `rankwise compress` on that run), the run
directory they write under `runs/cifar10/`, and what `collect` computes from the finished
outputs (`post`). A queue runs `commands()` (or only the `pending_commands(runs_dir)`);
`collect(runs_dir, results_dir)` (in `cifar10_collect.py`) turns finished rows into result
JSON files under `results/cifar10/`, and `section(results_root)` (in `cifar10_report.py`)
renders the BENCHMARKS.md table from those files only.

Models: the standard CIFAR ResNet-20 / ResNet-56 of He et al. 2016 (BasicBlock, option-A
identity shortcuts with zero-padded channels), **not** the reference TRP code's Bottleneck
"ResNet-56". Schedules (`SCHEDULES`): "paper" is the TRP recipe (164 epochs, lr 0.1 ÷10 at
82/122, wd 1e-4, batch 128, crop+flip); "cpu60" (the default) and "cpu40" are the shortened ones
this suite runs on one CPU core: 60 epochs cosine with wd 5e-4, and 40 epochs cosine with wd
1e-4 (lr 0.1, batch 128, crop+flip, `PRECISION`, channels-last, 1 thread). Run names carry
the schedule (`r20-dense-cpu60`; "cpu40" keeps the plain names it was first run under) and the
table states which one each row used (from its config.json).

Rows per model (prefix r20 / r56), settings of the papers unless marked ours:
- `dense`: plain SGD (momentum 0.9).
- `decomp-nc-ft`, `decomp-vh-ft`: the dense model decomposed channel-wise / spatially at the
  MACs of the paper's TRP+Nu rows (2.17× / 2.84×, rankwise counting, `budget:macs`), first conv
  kept, then fine-tuned `FINETUNE_EPOCHS` (ours: 10) at lr 0.01 cosine — the paper's baseline.
- `trp-nc`, `trpnu-nc`, `trp-vh`, `trpnu-vh`: TRP (energy 0.9, period 1) without / with the
  nuclear sub-gradient (λ = 3e-4); after training the run decomposes with value threshold 0.05
  into `RUN/factorized/` (no fine-tuning). `decomp-nc-ft-at-trpnu-nc`: the dense model
  decomposed at the MACs the TRP+Nu NC run ended with (a `{macs:RUN}` placeholder, resolved once
  RUN has finished) and fine-tuned like `decomp-nc-ft`: the equal-FLOPs baseline the claims
  compare it with.
- ResNet-20 only (`EXTRAS_MODELS`), each with its own equal-MACs baseline:
  `trpnu-nc-e97-m10` (ours): TRP+Nu NC with training energy 0.97, period 10
  (`cifar10_evidence.TRP_ENERGY_EVIDENCE`); `…-rt4`: it decomposed and fine-tuned as the TRP
  code's `--retrain`; `trpnu-nc-ft`: the paper's ImageNet recipe on CIFAR — TRP+Nu NC (energy
  0.9, period 1) while fine-tuning the trained dense run (`--init`), as long as the
  decomposition's fine-tuning.
- `sfw-ksup`, `sfw-nuc`: SFW with the spectral-K-support / nuclear ball (`SFW_SETTINGS`, ours,
  see its docstring), then `rankwise sweep` (rank removed from every conv without retraining)
  into `RUN-sweep/`, against `dense-sweep` (the same sweep of the SGD model: SGD's curve).
- `elrt-2x`, `elrt-4x`: ELRT Tucker-2 trained from scratch at 0.5 / 0.25 of the params.
- `pipeline`: the survey's pipeline (magnitude pruning 30 % → int8 → zstd) on the best row
  (`PIPELINE_SOURCE`, per schedule): on ResNet-20 cpu60 the spatial decomposition + fine-tuning,
  which is both more accurate and smaller than every TRP row; on cpu40 it ran on TRP+Nu NC (ours).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rankwise.bench.cifar10_steps import RUNS_DIR, Step, command_or_wait, resumes, step_done

SUITE = "cifar10"
RESULTS_DIR = Path("results/cifar10")
MODELS = {"r20": "resnet20", "r56": "resnet56"}

SCHEDULES: dict[str, tuple[str, ...]] = {
    "paper": ("--epochs", "164", "--schedule", "step", "--milestones", "82,122", "--lr", "0.1",
              "--wd", "1e-4", "--batch-size", "128"),
    "cpu60": ("--epochs", "60", "--schedule", "cosine", "--lr", "0.1", "--wd", "5e-4",
              "--batch-size", "128"),
    "cpu40": ("--epochs", "40", "--schedule", "cosine", "--lr", "0.1", "--wd", "1e-4",
              "--batch-size", "128"),
}
DEFAULT_SCHEDULE = "cpu60"
LEGACY_SCHEDULE = "cpu40"
"""Runs of the legacy schedule keep the names they were first run under (no schedule tag)."""
PRECISION = ("--precision", "auto")
"""bf16 autocast where the CPU computes bf16 natively (`analysis.precision`), else fp32: the rows
of BENCHMARKS.md ran bf16 on an AVX-512-bf16 CPU; on an AVX2-only CPU emulated bf16 is ~13×
slower than fp32. The table's schedule column says which precision each row ran in."""
RUNTIME = (*PRECISION, "--channels-last", "--num-threads", "1", "--quiet")
SWEEP_RATIOS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
FINETUNE_EPOCHS = 10
RETRAIN_EPOCHS = 4
PAPER_SPEEDUP = {"channel": 2.17, "spatial": 2.84}
"""TRP+Nu ResNet-20 FLOPs reductions (README); the decomposition baseline's MACs target."""

def trp_args(scheme: str, nuclear_weight: str, energy: str = "0.9", period: str = "1"
             ) -> tuple[str, ...]:
    """`rankwise train` flags of a TRP row: the code's energy 0.9 and period 1 unless given."""
    return ("--method", "trp", "--trp-energy", energy, "--trp-period", period, "--trp-scheme",
            scheme, "--nuclear-weight", nuclear_weight)


TRP_OURS = {"energy": "0.97", "period": "10"}
# Models that also run the TRP+Nu NC variants beyond the paper (`_trp_channel_extras`): they
# explain the ResNet-20 claim; on ResNet-56 they would cost about 6 more core-hours.
EXTRAS_MODELS = ("r20",)
SFW_SETTINGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "spectral-k-support": ("0.1", ("--sfw-k", "0.3", "--sfw-width", "3")),
    "nuclear": ("0.1", ("--sfw-width", "10")),
}
"""constraint → (lr, flags). Ours (the paper's per-experiment values were not found); the
evidence is `cifar10_evidence.SFW_EVIDENCE`. Common to both: gradient rescaling, heavy-ball
momentum 0.9, no weight decay, the exact LMO (default of the spectral sets)."""

SFW_COMMON = ("--method", "sfw", "--sfw-rescale", "gradient", "--sfw-momentum", "0.9",
              "--sfw-sweep", "none")
PIPELINE_SOURCE = {"cpu40": "trpnu-nc-e97-m10/factorized", "default": "decomp-vh-ft"}
PIPELINE_ARGS = ("--prune", "magnitude:0.3", "--quantize", "int8", "--entropy-code", "zstd")
POSTS = ("model", "trp", "decompose", "sweep", "elrt", "compress")


@dataclass(frozen=True)
class BenchRow:
    """One table row. `model`/`scheme` match the paper's rows (`papers.paper_row`); `post` says
    what `collect` reads: "model" (the run's saved model), "trp" (`RUN/factorized/`),
    "decompose" (the decompose output), "sweep" (accuracy vs rank removed, no retraining),
    "elrt" (the run's factorized model), "compress" (the pipeline's stage table)."""

    name: str
    model: str
    method: str
    scheme: str | None
    label: str
    post: str
    steps: tuple[Step, ...]
    needs: tuple[str, ...] = ()
    seed: int = 0
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def run(self) -> str:
        """The run directory (under the runs dir) whose outputs the row reads."""
        return self.steps[-1].out if self.steps else self.needs[0]


def _sfx(seed: int, schedule: str = LEGACY_SCHEDULE) -> str:
    """Run-name suffix of a schedule and seed (the legacy schedule and seed 0 add nothing)."""
    tag = "" if schedule == LEGACY_SCHEDULE else f"-{schedule}"
    return tag + (f"-s{seed}" if seed else "")


def schedule_args(schedule: str, **overrides: str) -> tuple[str, ...]:
    """`SCHEDULES[schedule]` with flag values replaced (`lr="1.0"` → `--lr 1.0`)."""
    args = list(SCHEDULES[schedule])
    for key, value in overrides.items():
        args[args.index("--" + key.replace("_", "-")) + 1] = value
    return tuple(args)


def _train(prefix: str, name: str, schedule: str, seed: int, *extra: str,
           **overrides: str) -> Step:
    run = f"{prefix}-{name}{_sfx(seed, schedule)}"
    argv = ("train", "--model", MODELS[prefix], "--dataset", SUITE, "--out", f"{{runs}}/{run}",
            *schedule_args(schedule, **overrides), *RUNTIME, "--seed", str(seed), *extra)
    return Step(argv, run, "summary.json")


def _decompose(prefix: str, scheme: str, schedule: str, seed: int, at: str | None = None
               ) -> Step:
    """Decompose the dense run at the paper's MACs reduction for `scheme`, or, with `at` (a
    run name), at the MACs that run ended with (resolved when it has finished)."""
    short = {"channel": "nc", "spatial": "vh"}[scheme]
    x = _sfx(seed, schedule)
    run = f"{prefix}-decomp-{short}-ft{x}" if at is None else f"{prefix}-decomp-{short}-ft-at-" \
        f"{at.removeprefix(prefix + '-').removesuffix(x)}{x}"
    budget = f"budget:macs={1.0 / PAPER_SPEEDUP[scheme]:.3f}" if at is None else \
        f"budget:macs={{macs:{at}}}"
    runtime = () if schedule == LEGACY_SCHEDULE else (*PRECISION, "--channels-last")
    argv = ("decompose", "--checkpoint", f"{{runs}}/{prefix}-dense{x}", "--format", scheme,
            "--rank", budget, "--skip-first-conv", "--dataset", SUITE, "--finetune",
            str(FINETUNE_EPOCHS), "--lr", "0.01", "--schedule", "cosine", *runtime,
            "--num-threads", "1", "--seed", str(seed), "--quiet", "--out", f"{{runs}}/{run}")
    return Step(argv, run, "decompose_report.json")


def _retrain(run: str, seed: int) -> Step:
    """The TRP code's `--retrain`: the trained run decomposed as TRP does (channel, value
    threshold 0.05, first conv and FC kept), then fine-tuned `RETRAIN_EPOCHS` at lr 0.01."""
    argv = ("decompose", "--checkpoint", f"{{runs}}/{run}", "--format", "channel",
            "--linear-format", "none", "--rank", "value:0.05", "--skip-first-conv", "--dataset",
            SUITE, "--finetune", str(RETRAIN_EPOCHS), "--lr", "0.01", "--schedule", "cosine",
            *PRECISION, "--channels-last", "--num-threads", "1", "--seed", str(seed),
            "--quiet", "--out", f"{{runs}}/{run}-rt{RETRAIN_EPOCHS}")
    return Step(argv, f"{run}-rt{RETRAIN_EPOCHS}", "decompose_report.json")


def _sweep(run: str) -> Step:
    """`rankwise sweep` of a trained run: every conv truncated at each ratio, no retraining."""
    return Step(("sweep", f"{{runs}}/{run}", "--kind", "lowrank", "--scheme", "channel",
                 "--ratios", SWEEP_RATIOS, "--out", f"{{runs}}/{run}-sweep"), f"{run}-sweep",
                "sweep.json")


def _same_macs(prefix: str, schedule: str, seed: int, dense: str, step: Step) -> BenchRow:
    """Channel decomposition of the dense run at exactly the MACs the TRP run `step` ended
    with, fine-tuned `FINETUNE_EPOCHS`: the equal-FLOPs baseline a TRP row is judged against."""
    d = _decompose(prefix, "channel", schedule, seed, at=step.out)
    return BenchRow(d.out, MODELS[prefix], "decompose+ft", "channel", "  decompose NC + "
                    f"fine-tune {FINETUNE_EPOCHS} ep at the same MACs", "decompose", (d,),
                    needs=(dense, step.out), seed=seed, notes={"at_macs_of": step.out})


def _trp_channel_extras(prefix: str, schedule: str, seed: int, dense: str) -> list[BenchRow]:
    """TRP+Nu NC beyond the paper's CIFAR setting, each followed by a channel decomposition of
    the dense run at exactly the MACs it ended with (the equal-FLOPs baseline): energy 0.97 /
    period 10 from scratch (ours) with the code's `--retrain`, and the paper's ImageNet recipe
    (TRP while fine-tuning the trained dense model) on CIFAR: energy 0.9, period 1,
    `FINETUNE_EPOCHS` at lr 0.01 cosine, as long as the decomposition's fine-tuning."""
    m = MODELS[prefix]
    ours = _train(prefix, "trpnu-nc-e97-m10", schedule, seed,
                  *trp_args("channel", "3e-4", **TRP_OURS))
    tuned = _train(prefix, "trpnu-nc-ft", schedule, seed, "--init", f"{{runs}}/{dense}",
                   *trp_args("channel", "3e-4"), epochs=str(FINETUNE_EPOCHS), lr="0.01")
    rt = _retrain(ours.out, seed)

    rows = [BenchRow(ours.out, m, "trp+nu", "channel", f"TRP+Nu NC, energy {TRP_OURS['energy']}"
                     f", period {TRP_OURS['period']} (ours)", "trp", (ours,), seed=seed),
            BenchRow(rt.out, m, "trp+nu", "channel", f"  + retrain {RETRAIN_EPOCHS} ep (the "
                     "code's `--retrain`)", "decompose", (rt,), needs=(ours.out,), seed=seed),
            _same_macs(prefix, schedule, seed, dense, ours),
            BenchRow(tuned.out, m, "trp+nu", "channel", "TRP+Nu NC while fine-tuning the dense "
                     f"model {FINETUNE_EPOCHS} ep (ImageNet recipe)", "trp", (tuned,),
                     needs=(dense,), seed=seed),
            _same_macs(prefix, schedule, seed, dense, tuned)]
    return rows


def model_rows(prefix: str, schedule: str = DEFAULT_SCHEDULE, seed: int = 0) -> list[BenchRow]:
    """The rows of one model (`prefix` r20 or r56) under one schedule, in table order."""
    m, x = MODELS[prefix], _sfx(seed, schedule)
    dense = _train(prefix, "dense", schedule, seed)
    rows = [BenchRow(dense.out, m, "dense", None, "dense (SGD)", "model", (dense,), seed=seed)]
    for scheme, short in (("channel", "nc"), ("spatial", "vh")):
        step = _decompose(prefix, scheme, schedule, seed)
        rows.append(BenchRow(
            step.out, m, "decompose+ft", scheme,
            f"decompose {short.upper()} + fine-tune {FINETUNE_EPOCHS} ep", "decompose",
            (step,), needs=(dense.out,), seed=seed))
    for scheme, short in (("channel", "nc"), ("spatial", "vh")):
        for nu, weight in (("trp", "0"), ("trpnu", "3e-4")):
            step = _train(prefix, f"{nu}-{short}", schedule, seed, *trp_args(scheme, weight))
            label = f"{'TRP+Nu' if nu == 'trpnu' else 'TRP'} {short.upper()}"
            rows.append(BenchRow(step.out, m, "trp+nu" if nu == "trpnu" else "trp", scheme,
                                 label, "trp", (step,), seed=seed))
            if (scheme, nu) == ("channel", "trpnu"):
                rows.append(_same_macs(prefix, schedule, seed, dense.out, step))
        if scheme == "channel" and prefix in EXTRAS_MODELS:
            rows += _trp_channel_extras(prefix, schedule, seed, dense.out)
    sweep = _sweep(dense.out)
    rows.append(BenchRow(sweep.out, m, "sgd-sweep", "channel",
                         "SGD, truncated (no retraining)", "sweep", (sweep,),
                         needs=(dense.out,), seed=seed))
    for constraint, short in (("spectral-k-support", "ksup"), ("nuclear", "nuc")):
        lr, flags = SFW_SETTINGS[constraint]
        step = _train(prefix, f"sfw-{short}", schedule, seed, *SFW_COMMON, "--sfw-constraint",
                      constraint, *flags, lr=lr, wd="0")
        rows.append(BenchRow(step.out, m, "sfw", "channel",
                             f"SFW {constraint}, truncated (no retraining)", "sweep",
                             (step, _sweep(step.out)), seed=seed))
    for level, mult in (("0.5", "2x"), ("0.25", "4x")):
        step = _train(prefix, f"elrt-{mult}", schedule, seed, "--method", "elrt",
                      "--elrt-format", "tucker2", "--elrt-rank", f"budget:params={level}")
        rows.append(BenchRow(step.out, m, "elrt", "tucker2", f"ELRT Tucker-2 {mult} params",
                             "elrt", (step,), seed=seed))
    run, _, sub = PIPELINE_SOURCE.get(schedule, PIPELINE_SOURCE["default"]).partition("/")
    src = f"{prefix}-{run}{x}"
    pipe = Step(("compress", f"{{runs}}/{src}/{sub}".rstrip("/"), *PIPELINE_ARGS, "--out",
                 f"{{runs}}/{prefix}-pipeline{x}"), f"{prefix}-pipeline{x}", "report.json")
    rows.append(BenchRow(pipe.out, m, "pipeline", None, f"survey pipeline on {src}",
                         "compress", (pipe,), needs=(src,), seed=seed))
    return rows


def suite_rows(prefixes: Sequence[str] = ("r20", "r56"), schedule: str = DEFAULT_SCHEDULE,
               seeds: Sequence[int] = (0,)) -> list[BenchRow]:
    """All rows: every model prefix × seed (seed s > 0 suffixes every run name with `-sS`)."""
    return [r for seed in seeds for prefix in prefixes for r in model_rows(prefix, schedule, seed)]


def schedule_of(row: BenchRow) -> str:
    """The `SCHEDULES` key a row's runs were named under."""
    parts = row.name.split("-")
    return next((p for p in parts if p in SCHEDULES), LEGACY_SCHEDULE)


def commands(rows: Sequence[BenchRow] | None = None,
             runs_dir: Path = RUNS_DIR) -> list[tuple[str, str]]:
    """`(run name, shell command)` of every step, dependencies first (trainings, then
    decompose/sweep/compress steps), each run once."""
    rows = suite_rows() if rows is None else rows
    seen: dict[str, str] = {}
    later: dict[str, str] = {}
    for r in rows:
        for s in r.steps:
            (seen if s.argv[0] == "train" else later).setdefault(s.out, command_or_wait(
                s, runs_dir))
    return [*seen.items(), *later.items()]


def open_rows(rows: Sequence[BenchRow], results_dir: Path = RESULTS_DIR) -> list[BenchRow]:
    """The rows still to produce: those without a result file `results_dir/<row>.json`, and the
    rows whose runs they read (`needs`, a `{macs:RUN}` placeholder), transitively, in `rows`
    order. A row whose result is committed is not run again on a fresh clone unless a row still
    to produce reads its run; delete its result file to rerun it."""
    results_dir = Path(results_dir)
    producer = {s.out: r.name for r in rows for s in r.steps}
    keep = {r.name for r in rows if not (results_dir / f"{r.name}.json").is_file()}
    todo = list(keep)
    by_name = {r.name: r for r in rows}
    while todo:
        row = by_name[todo.pop()]
        reads = [*row.needs, *(s.waits_for for s in row.steps if s.waits_for)]
        for name in (producer[n] for n in reads if n in producer):
            if name not in keep:
                keep.add(name)
                todo.append(name)
    return [r for r in rows if r.name in keep]


def pending_commands(runs_dir: Path = RUNS_DIR, rows: Sequence[BenchRow] | None = None
                     ) -> list[tuple[str, str]]:
    """`commands()` of the steps not finished yet in `runs_dir`; a step stopped after an epoch
    of its training (`cifar10_steps.resumes`) continues with `--resume`."""
    rows = suite_rows() if rows is None else rows
    done = {s.out for r in rows for s in r.steps if step_done(s, runs_dir)}
    started = {s.out for r in rows for s in r.steps if resumes(s, runs_dir)}
    return [(n, c + " --resume" if n in started else c)
            for n, c in commands(rows, runs_dir) if n not in done]


__all__ = ["BenchRow", "DEFAULT_SCHEDULE", "LEGACY_SCHEDULE", "MODELS", "RESULTS_DIR",
           "RUNS_DIR", "SCHEDULES", "SFW_SETTINGS", "Step", "commands", "model_rows",
           "open_rows", "pending_commands", "schedule_of", "step_done", "suite_rows"]
