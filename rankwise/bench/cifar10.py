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
82/122, wd 1e-4, batch 128, crop+flip); "cpu40" is the shortened one this suite runs on one CPU
core (40 epochs, cosine, lr 0.1, wd 1e-4, batch 128, crop+flip, bf16 autocast, channels-last,
1 thread). The table states which one each row used (from its config.json).

Rows per model (prefix r20 / r56), settings of the papers unless marked ours:
- `dense`: plain SGD (momentum 0.9).
- `decomp-nc-ft`, `decomp-vh-ft`: the dense model decomposed channel-wise / spatially at the
  MACs of the paper's TRP+Nu rows (2.17× / 2.84×, rankwise counting, `budget:macs`), first conv
  kept, then fine-tuned `FINETUNE_EPOCHS` (ours: 10) at lr 0.01 cosine — the paper's baseline.
- `trp-nc`, `trpnu-nc`, `trp-vh`, `trpnu-vh`: TRP (energy 0.9, period 1) without / with the
  nuclear sub-gradient (λ = 3e-4); after training the run decomposes with value threshold 0.05
  into `RUN/factorized/` (no fine-tuning).
- `sfw-ksup`, `sfw-nuc`: SFW with the spectral-K-support / nuclear ball (`SFW_SETTINGS`, ours,
  see its docstring), then `rankwise sweep` (rank removed from every conv without retraining)
  into `RUN-sweep/`, against `dense-sweep` (the same sweep of the SGD model: SGD's curve).
- `elrt-2x`, `elrt-4x`: ELRT Tucker-2 trained from scratch at 0.5 / 0.25 of the params.
- `pipeline`: the survey's pipeline (magnitude pruning 30 % → int8 → zstd) on `PIPELINE_SOURCE`
  (TRP+Nu NC's factorized model by default; change it to the best row once results are in).
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SUITE = "cifar10"
RUNS_DIR = Path("runs/cifar10")
RESULTS_DIR = Path("results/cifar10")
MODELS = {"r20": "resnet20", "r56": "resnet56"}

SCHEDULES: dict[str, tuple[str, ...]] = {
    "paper": ("--epochs", "164", "--schedule", "step", "--milestones", "82,122", "--lr", "0.1",
              "--wd", "1e-4", "--batch-size", "128"),
    "cpu40": ("--epochs", "40", "--schedule", "cosine", "--lr", "0.1", "--wd", "1e-4",
              "--batch-size", "128"),
}
RUNTIME = ("--precision", "bf16", "--channels-last", "--num-threads", "1", "--quiet")
SWEEP_RATIOS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
FINETUNE_EPOCHS = 10
PAPER_SPEEDUP = {"channel": 2.17, "spatial": 2.84}
"""TRP+Nu ResNet-20 FLOPs reductions (README); the decomposition baseline's MACs target."""

TRP_COMMON = ("--method", "trp", "--trp-energy", "0.9", "--trp-period", "1")
SFW_SETTINGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "spectral-k-support": ("0.1", ("--sfw-k", "0.3", "--sfw-width", "3")),
    "nuclear": ("0.1", ("--sfw-width", "10")),
}
"""constraint → (lr, flags). Ours (the paper's per-experiment values were not found); the
evidence is `SFW_EVIDENCE`. Common to both: gradient rescaling, heavy-ball momentum 0.9, no
weight decay, the exact LMO (default of the spectral sets)."""

SFW_EVIDENCE = """
Why SFW did not make ResNets low-rank in the quick suite, and the setting chosen here.

An SFW iterate is θ_T = Π(1 − η_t)·θ_0 + Σ_t η_t Π_{s>t}(1 − η_s)·v_t: the initialization keeps
the share Π(1 − η_t) ≈ exp(−Σ_t η_t), and only the rest is built from rank-K vertices. With
gradient rescaling η_t = lr·‖g_t‖ / ‖θ_t − v_t‖, and ‖θ − v‖ ≈ the ball's radius (width 10 ×
E‖W_init‖), so η is tiny: mean 6.3e-4 per step at lr 0.1. The quick suite ran 234 steps
(Σ η ≈ 0.15: ~86 % of each conv weight is still its random, full-rank initialization); the
constraint never binds either (K-support gauge at 0.33–0.47 of the radius, init 0.43).

Probe (ResNet-20, first 10,000 CIFAR-10 training images, crop+flip, 8 epochs = 632 steps,
cosine, batch 128, bf16, 1 thread; test on the first 2,000 images; every 3×3 conv but the first
truncated to (1 − s)·rank in its channel matricization, no retraining; accuracy %):

| run | lr | mean η | init share | acc | s=0.25 | 0.5 | 0.75 | 0.9 | energy@r/2 | erank/r |
|---|---|---|---|---|---|---|---|---|---|---|
| SGD (wd 1e-4) | 0.1 | – | – | 51.1 | 38.5 | 22.0 | 17.1 | 14.6 | 0.680 | 0.973 |
| SFW K-sup K=0.3 w=10 | 0.1 | 6.3e-4 | 0.67 | 49.3 | 46.2 | 39.9 | 24.8 | 11.3 | 0.684 | 0.972 |
| SFW K-sup K=0.3 w=10 | 1.0 | 1.7e-2 | ~0 | 42.7 | 42.8 | 42.0 | 32.4 | 10.9 | 0.991 | 0.458 |
| SFW nuclear w=10 | 1.0 | 2.8e-2 | ~0 | 38.9 | 39.0 | 38.8 | 36.4 | 14.2 | 1.000 | 0.111 |
| SFW K-sup K=0.3 w=3 | 1.0 | 3.9e-2 | ~0 | 45.7 | 45.6 | 45.5 | 42.9 | 20.3 | 0.995 | 0.452 |
| SFW K-sup K=0.3 w=3 | 0.3 | 1.6e-2 | ~0 | 46.8 | 46.5 | 46.7 | 41.8 | 10.3 | 0.977 | 0.526 |
| SFW K-sup K=0.3 w=3 | 0.1 | 2.4e-3 | 0.22 | 49.8 | 48.4 | 47.6 | 35.0 | 10.3 | 0.802 | 0.890 |
(init share = Π(1 − η_t), mean over the convs; energy@r/2 = Σσ² of the top half / Σσ²; erank
= effective rank (Roy & Vetterli) / max rank, means over the 3×3 convs.)

Reading: SFW's curve is above SGD's already at lr 0.1 (39.9 vs 22.0 at half the rank removed,
width 10), although the spectrum statistics equal SGD's (the learned part sits in a few large
singular directions on top of the surviving random init). Once Σ η ≈ 10 (lr 1.0 at width 10, lr
0.3 at width 3) the weights are truly low-rank (erank ≈ 0.5 of the rank for K-support, 0.11 for
nuclear) and the curve is flat to s = 0.5 (K-support) or 0.75 (nuclear); large per-step η costs
dense accuracy (noisier steps). A tighter ball is better: width 3 makes η larger for the same lr
(‖θ − v‖ is smaller) and, at equal Σ η, gave +4 points dense and a flatter curve than width 10
(46.8 / 46.7 at s = 0.5 vs 42.7 / 42.0); at lr 0.1 it stays within 1.4 points of SGD dense and
loses 2.2 points at half the rank removed (SGD: 29). The quantity to set is Σ_t η_t over the
run, not lr alone: the 40-epoch full CIFAR-10 run takes 15,640 steps, so width 3 at lr 0.1 (η ≈
2.4e-3) gives Σ η ≈ 37, in the low-rank regime, with the small steps that kept dense accuracy
here. Recommended for the CIFAR-10 ResNet-20 run: spectral-K-support, K = 0.3, width 3, lr 0.1
(cosine, per step), gradient rescaling, heavy-ball momentum 0.9, no weight decay, exact LMO;
nuclear ball: width 10, lr 0.1 (η ≈ 3e-3, Σ η ≈ 40). Check Σ η from the logged `sfw_eta` after a
few epochs. Not probed (time): K other than 0.3, EMA momentum, other rescalings, the full
schedule itself.
"""

SFW_COMMON = ("--method", "sfw", "--sfw-rescale", "gradient", "--sfw-momentum", "0.9",
              "--sfw-sweep", "none")
PIPELINE_SOURCE = "trpnu-nc/factorized"
PIPELINE_ARGS = ("--prune", "magnitude:0.3", "--quantize", "int8", "--entropy-code", "zstd")
POSTS = ("model", "trp", "decompose", "sweep", "elrt", "compress")


@dataclass(frozen=True)
class Step:
    """One CLI call: `argv` after `rankwise`, writing the run directory `out` (a name under the
    runs directory); `done` is the file whose presence marks it finished."""

    argv: tuple[str, ...]
    out: str
    done: str

    def command(self, runs_dir: Path = RUNS_DIR) -> str:
        """The shell command line, with `{runs}` replaced by `runs_dir`."""
        args = [a.replace("{runs}", str(runs_dir)) for a in self.argv]
        return shlex.join(["rankwise", *args])


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


def _sfx(seed: int) -> str:
    """Run-name suffix of a seed (seed 0 keeps the plain names)."""
    return f"-s{seed}" if seed else ""


def schedule_args(schedule: str, **overrides: str) -> tuple[str, ...]:
    """`SCHEDULES[schedule]` with flag values replaced (`lr="1.0"` → `--lr 1.0`)."""
    args = list(SCHEDULES[schedule])
    for key, value in overrides.items():
        args[args.index("--" + key.replace("_", "-")) + 1] = value
    return tuple(args)


def _train(prefix: str, name: str, schedule: str, seed: int, *extra: str,
           **overrides: str) -> Step:
    run = f"{prefix}-{name}{_sfx(seed)}"
    argv = ("train", "--model", MODELS[prefix], "--dataset", SUITE, "--out", f"{{runs}}/{run}",
            *schedule_args(schedule, **overrides), *RUNTIME, "--seed", str(seed), *extra)
    return Step(argv, run, "summary.json")


def _decompose(prefix: str, scheme: str, seed: int) -> Step:
    short = {"channel": "nc", "spatial": "vh"}[scheme]
    run = f"{prefix}-decomp-{short}-ft{_sfx(seed)}"
    budget = f"budget:macs={1.0 / PAPER_SPEEDUP[scheme]:.3f}"
    argv = ("decompose", "--checkpoint", f"{{runs}}/{prefix}-dense{_sfx(seed)}", "--format",
            scheme,
            "--rank", budget, "--skip-first-conv", "--dataset", SUITE, "--finetune",
            str(FINETUNE_EPOCHS), "--lr", "0.01", "--schedule", "cosine", "--num-threads", "1",
            "--seed", str(seed), "--quiet", "--out", f"{{runs}}/{run}")
    return Step(argv, run, "decompose_report.json")


def _sweep(run: str) -> Step:
    """`rankwise sweep` of a trained run: every conv truncated at each ratio, no retraining."""
    return Step(("sweep", f"{{runs}}/{run}", "--kind", "lowrank", "--scheme", "channel",
                 "--ratios", SWEEP_RATIOS, "--out", f"{{runs}}/{run}-sweep"), f"{run}-sweep",
                "sweep.json")


def model_rows(prefix: str, schedule: str = "cpu40", seed: int = 0) -> list[BenchRow]:
    """The rows of one model (`prefix` r20 or r56) in table order."""
    m, x = MODELS[prefix], _sfx(seed)
    dense = _train(prefix, "dense", schedule, seed)
    rows = [BenchRow(dense.out, m, "dense", None, "dense (SGD)", "model", (dense,), seed=seed)]
    for scheme, short in (("channel", "nc"), ("spatial", "vh")):
        step = _decompose(prefix, scheme, seed)
        rows.append(BenchRow(
            step.out, m, "decompose+ft", scheme,
            f"decompose {short.upper()} + fine-tune {FINETUNE_EPOCHS} ep", "decompose",
            (step,), needs=(dense.out,), seed=seed))
    for scheme, short in (("channel", "nc"), ("spatial", "vh")):
        for nu, weight in (("trp", "0"), ("trpnu", "3e-4")):
            step = _train(prefix, f"{nu}-{short}", schedule, seed, *TRP_COMMON, "--trp-scheme",
                          scheme, "--nuclear-weight", weight)
            label = f"{'TRP+Nu' if nu == 'trpnu' else 'TRP'} {short.upper()}"
            rows.append(BenchRow(step.out, m, "trp+nu" if nu == "trpnu" else "trp", scheme,
                                 label, "trp", (step,), seed=seed))
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
    run, _, sub = PIPELINE_SOURCE.partition("/")
    src = f"{prefix}-{run}{x}"
    pipe = Step(("compress", f"{{runs}}/{src}/{sub}".rstrip("/"), *PIPELINE_ARGS, "--out",
                 f"{{runs}}/{prefix}-pipeline{x}"), f"{prefix}-pipeline{x}", "report.json")
    rows.append(BenchRow(pipe.out, m, "pipeline", None, f"survey pipeline on {src}",
                         "compress", (pipe,), needs=(src,), seed=seed))
    return rows


def suite_rows(prefixes: Sequence[str] = ("r20", "r56"), schedule: str = "cpu40",
               seeds: Sequence[int] = (0,)) -> list[BenchRow]:
    """All rows: every model prefix × seed (seed s > 0 suffixes every run name with `-sS`)."""
    return [r for seed in seeds for prefix in prefixes for r in model_rows(prefix, schedule, seed)]


def commands(rows: Sequence[BenchRow] | None = None,
             runs_dir: Path = RUNS_DIR) -> list[tuple[str, str]]:
    """`(run name, shell command)` of every step, dependencies first (trainings, then
    decompose/sweep/compress steps), each run once."""
    rows = suite_rows() if rows is None else rows
    seen: dict[str, str] = {}
    later: dict[str, str] = {}
    for r in rows:
        for s in r.steps:
            (seen if s.argv[0] == "train" else later).setdefault(s.out, s.command(runs_dir))
    return [*seen.items(), *later.items()]


def step_done(step: Step, runs_dir: Path = RUNS_DIR) -> bool:
    """Whether `step` has finished (its marker file exists)."""
    return (Path(runs_dir) / step.out / step.done).is_file()


def pending_commands(runs_dir: Path = RUNS_DIR, rows: Sequence[BenchRow] | None = None
                     ) -> list[tuple[str, str]]:
    """`commands()` of the steps not finished yet in `runs_dir`."""
    rows = suite_rows() if rows is None else rows
    done = {s.out for r in rows for s in r.steps if step_done(s, runs_dir)}
    return [(n, c) for n, c in commands(rows, runs_dir) if n not in done]


def main(argv: list[str] | None = None) -> int:
    """`python -m rankwise.bench.cifar10 {commands,pending,collect,section}`."""
    p = argparse.ArgumentParser(prog="python -m rankwise.bench.cifar10",
                                description="CIFAR-10 suite: commands, collect, section")
    p.add_argument("action", choices=("commands", "pending", "collect", "section"))
    p.add_argument("--runs", type=Path, default=RUNS_DIR)
    p.add_argument("--results", type=Path, default=RESULTS_DIR.parent,
                   help="results root (files go to RESULTS/cifar10/)")
    p.add_argument("--models", default="r20,r56", help="model prefixes, comma-separated")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default="cpu40")
    p.add_argument("--seeds", default="0")
    p.add_argument("--no-latency", action="store_true", help="collect without timing")
    a = p.parse_args(argv)
    rows = suite_rows(tuple(a.models.split(",")), a.schedule,
                      tuple(int(s) for s in a.seeds.split(",")))
    if a.action in ("commands", "pending"):
        listed = commands(rows, a.runs) if a.action == "commands" else \
            pending_commands(a.runs, rows)
        for _, cmd in listed:
            print(cmd)
        return 0
    if a.action == "collect":
        from rankwise.bench.cifar10_collect import collect

        for path in collect(a.runs, a.results / SUITE, rows=rows, latency=not a.no_latency):
            print(path)
        return 0
    from rankwise.bench.cifar10_report import section

    print(section(a.results, rows=rows, runs_dir=a.runs))
    return 0


__all__ = ["BenchRow", "MODELS", "RESULTS_DIR", "RUNS_DIR", "SCHEDULES", "SFW_SETTINGS", "Step",
           "commands", "model_rows", "pending_commands", "step_done", "suite_rows"]

if __name__ == "__main__":
    raise SystemExit(main())
