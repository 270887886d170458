"""`rankwise train`: flags → `RunConfig` → `rankwise.run` (the function the benchmarks call).

The flags come from the option declarations (`ModelConfig`, `DataConfig`, `TrainConfig` in
`rankwise.train.config`, unprefixed) and from each method (`--<method>-...`, plus a few
unprefixed aliases such as `--nuclear-weight`). A flag of a method other than `--method` is
refused. `--out` must be new or empty unless `--resume` (continue) or `--overwrite` (replace
once the new run has finished). Under `torchrun --nproc_per_node=N -m rankwise train ...` it
trains with DDP.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from rankwise import options
from rankwise.errors import ConfigError
from rankwise.train.runspec import dataset_spec, load_split, model_kwargs_for

# `rankwise train` defaults that differ from `TrainConfig()`: the ResNet CIFAR recipe length.
CLI_TRAIN_DEFAULTS = {"epochs": 164, "milestones": [82, 122]}


def _cli_base():
    from rankwise.train.config import TrainConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return TrainConfig(**CLI_TRAIN_DEFAULTS, device=device)


def run_config_from_args(args: argparse.Namespace):
    """The `RunConfig` the parsed flags describe (refusing another method's flags)."""
    from rankwise.train.config import DataConfig, ModelConfig, TrainConfig
    from rankwise.train.recipes import RECIPES, get_recipe
    from rankwise.train.run import RunConfig

    recipe = get_recipe(args.method)
    mine = set(recipe.given_flags(args))
    wrong = {name: [f for f in r.given_flags(args) if f not in mine]
             for name, r in RECIPES.items() if name != recipe.name}
    wrong = {name: flags for name, flags in wrong.items() if flags}
    if wrong:
        shown = "; ".join(f"{', '.join(f)} (of --method {m})" for m, f in wrong.items())
        raise ConfigError(f"flags of another method: {shown}; they do nothing with --method "
                          f"{recipe.name}. Drop them or pass the --method they belong to")
    train = options.from_args(TrainConfig, args, base=_cli_base())
    data = options.from_args(DataConfig, args)
    model = options.from_args(ModelConfig, args)
    return RunConfig(model=model, data=data, train=train, method=recipe.name,
                     method_config=recipe.config_from_args(args), out=args.out,
                     resume=args.resume, overwrite=args.overwrite)


def train_command(args: argparse.Namespace) -> int:
    from rankwise.train.run import run

    config = run_config_from_args(args)
    summary = run(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print_summary(summary, quiet=config.train.quiet)
    return 0


def print_summary(summary: dict[str, Any], quiet: bool = False) -> None:
    """A rich table of the final metrics (one line of JSON when `quiet`)."""
    keys = ("model", "dataset", "method", "epoch", "step", "params", "train_loss", "train_acc",
            "test_loss", "test_acc", "out")
    if quiet:
        print(json.dumps({k: summary.get(k) for k in keys}, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="rankwise train: final metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in keys:
        v = summary.get(k)
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    for k, v in (summary.get("method_report") or {}).items():
        if isinstance(v, (int, float, str)):
            text = f"{v:.4g}" if isinstance(v, float) else str(v)
            table.add_row(f"{summary['method']}.{k}", text)
    Console().print(table)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """`--data-dir`, `--download`, `--synthetic-size` for commands that read a run's data."""
    p.add_argument("--data-dir", default=None, help="where the dataset files are")
    p.add_argument("--download", action="store_const", const=True, default=None,
                   help="download a missing dataset, also into --data-dir (default: a missing "
                        "dataset is fetched into the cache unless --offline / RANKWISE_OFFLINE=1)")
    p.add_argument("--offline", dest="download", action="store_const", const=False,
                   help="never download")
    p.add_argument("--synthetic-size", type=int, default=512,
                   help="samples per split of --dataset synthetic (default 512)")


def register(subparsers: Any) -> None:
    from rankwise.train.config import DataConfig, ModelConfig, TrainConfig
    from rankwise.train.recipes import RECIPES

    p = subparsers.add_parser(
        "train", help="train a model (dense or with a low-rank --method)",
        description="Train a zoo model; checkpoints every epoch (resume with --resume), "
                    "saves model.safetensors + model.json into --out. Use torchrun for DDP. "
                    "Defaults are TrainConfig's, except --epochs 164 --milestones 82,122.")
    options.add_arguments(p.add_argument_group("model"), ModelConfig)
    options.add_arguments(p.add_argument_group("data"), DataConfig)
    for flag in ("--model", "--dataset"):
        p._option_string_actions[flag].required = True
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--method", default="dense", choices=sorted(RECIPES))
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in OUT (only once the new run has finished)")
    options.add_arguments(p.add_argument_group("training"), TrainConfig)
    for recipe in RECIPES.values():  # --<method>-... flags (+ free aliases), SUPPRESS defaults
        recipe.add_arguments(p.add_argument_group(f"--method {recipe.name}", recipe.help or None))
    p.set_defaults(func=train_command)


__all__ = ["add_data_arguments", "dataset_spec", "load_split", "model_kwargs_for",
           "print_summary", "register", "run_config_from_args", "train_command"]
