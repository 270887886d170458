"""`rankwise decompose`: factorize a (trained) model and save it with `rankwise.save`.

Extension points for other commands (e.g. `--finetune N` by the trainer owner):
`add_arguments(parser)` builds the options, `load_source(args)` the input model,
`after_decompose(args, model, report, source)` runs between surgery and saving (identity
here: override or extend it to fine-tune), and `decompose_command(args)` ties them together.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from rankwise.cli.profile import add_model_arg, default_shape, model_kwargs, parse_shape
from rankwise.errors import CheckpointError, ConfigError


@dataclass
class Source:
    """The model to decompose and what is needed to save it again."""

    model: nn.Module
    arch: str | None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    path: str | None = None


def find_saved_dir(path: Path) -> Path | None:
    """`path` if it holds `model.json`, else the newest `path/*/model.json` folder, else None."""
    if (path / "model.json").is_file():
        return path
    found = sorted(path.glob("*/model.json"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def load_source(args: argparse.Namespace) -> Source:
    """The model named by `--model`, with weights from `--checkpoint` when given.

    `--checkpoint` may be a directory saved by `rankwise.save` (or a run directory containing
    one, e.g. `run/final/`), or a `.safetensors` state dict of `--model`. Pickled `.pt` files
    are never read.
    """
    from rankwise import io
    from rankwise.models import create_model

    kw = model_kwargs(args)
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        if ckpt.is_dir():
            saved = find_saved_dir(ckpt)
            if saved is None and (ckpt / "checkpoint.pt").is_file():
                return _from_training_checkpoint(ckpt, args, kw)
            if saved is None:
                raise CheckpointError(f"{ckpt} holds no model.json (in it or one folder below) "
                                      "and no checkpoint.pt; pass a directory written by "
                                      "rankwise.save or a `rankwise train` run directory")
            config = io.read_config(saved)
            arch = config.get("arch") or args.model
            base = None if config.get("arch") else _create(args.model, kw)
            model = io.load(saved, model=base)
            return Source(model, arch, config.get("arch_kwargs") or kw,
                          io.saved_input_shape(saved), str(saved))
        if ckpt.suffix == ".safetensors" and ckpt.is_file():
            model = _create(args.model, kw)
            _load_state(model, ckpt)
            return Source(model, args.model, kw, None, str(ckpt))
        raise CheckpointError(f"{ckpt}: expected a directory saved by rankwise.save or a "
                              ".safetensors state dict (pickled .pt files are not read)")
    if not args.model:
        raise ConfigError("pass --model NAME (and optionally --checkpoint PATH)")
    return Source(create_model(args.model, **kw), args.model, kw, None, None)


def _from_training_checkpoint(run: Path, args: argparse.Namespace,
                              kw: dict[str, Any]) -> Source:
    """The model of an unfinished `rankwise train` run: `config.json` names the architecture,
    `checkpoint.pt` (loaded with `weights_only=True`) holds the weights."""
    from rankwise.train.checkpoint import load_checkpoint

    config: dict[str, Any] = {}
    if (run / "config.json").is_file():
        try:
            config = json.loads((run / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{run / 'config.json'} is not valid JSON ({e})") from e
    arch_info = config.get("model") or {}
    arch = arch_info.get("name") or args.model
    arch_kwargs = arch_info.get("kwargs") or kw
    model = _create(arch, arch_kwargs)
    state = load_checkpoint(run / "checkpoint.pt")
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{run / 'checkpoint.pt'} does not match {arch} {arch_kwargs}: "
                              f"{e}") from e
    shape = config.get("input_shape")
    return Source(model, arch, arch_kwargs, tuple(shape) if shape else None, str(run))


def _create(name: str | None, kw: dict[str, Any]) -> nn.Module:
    from rankwise.models import create_model

    if not name:
        raise ConfigError("this checkpoint does not name its architecture; pass --model NAME")
    return create_model(name, **kw)


def _load_state(model: nn.Module, file: Path) -> None:
    from safetensors.torch import load_file

    try:
        state = load_file(str(file))
    except Exception as e:
        raise CheckpointError(f"{file} is not a valid safetensors file ({e})") from e
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{file} does not match --model: missing {result.missing_keys[:3]}, "
                              f"unexpected {result.unexpected_keys[:3]}; pass the right --model")


def after_decompose(args: argparse.Namespace, model: nn.Module, report: Any,
                    source: Source) -> nn.Module:
    """Hook between surgery and saving; identity here (fine-tuning plugs in here)."""
    return model


def decompose_command(args: argparse.Namespace) -> int:
    """Load → `decompose` → `after_decompose` → `io.save` → print the report."""
    from rankwise import io
    from rankwise.surgery import decompose

    source = load_source(args)
    if args.input_shape:
        shape = parse_shape(args.input_shape)
    elif source.input_shape:
        shape = source.input_shape
    elif source.arch:
        shape = default_shape(source.arch, source.arch_kwargs)
    else:
        raise ConfigError("cannot tell the input shape; pass --input-shape, e.g. 3,32,32")
    model, report = decompose(
        source.model, format=None if args.format == "none" else args.format, rank=args.rank,
        include=args.include or None, exclude=args.exclude or None, inplace=True,
        input_shape=shape, skip_first_conv=args.skip_first_conv,
        linear_format=None if args.linear_format == "none" else args.linear_format,
        min_saving=args.min_saving)
    model = after_decompose(args, model, report, source)
    out = Path(args.out)
    meta = {"command": "decompose", "source": source.path, "rank": str(args.rank),
            "format": args.format, "linear_format": args.linear_format,
            "totals": report.totals}
    io.save(model, out, arch=source.arch, arch_kwargs=source.arch_kwargs, input_shape=shape,
            meta=meta)
    (out / "decompose_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    (out / "decompose_report.md").write_text(report.to_markdown())
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        report.print()
        print(f"saved to {out}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="zoo model name, e.g. resnet20")
    p.add_argument("--checkpoint", default=None,
                   help="saved model dir (rankwise.save), a run dir holding one, or .safetensors")
    p.add_argument("--format", default="tucker2",
                   help="conv format: tucker2|channel|spatial|cp|none; 1×1 convs always use "
                        "channel (default tucker2)")
    p.add_argument("--linear-format", default="svd", help="linear format: svd|tt|none")
    p.add_argument("--rank", default="energy:0.9",
                   help="energy:0.9, ratio:0.25, fixed:8, value:0.05, erank, stable, vbmf, "
                        "budget:params=0.3, budget:macs=0.3 (default energy:0.9)")
    p.add_argument("--include", action="append", default=[],
                   help="glob/regex on module names; repeatable (default: all conv/linear)")
    p.add_argument("--exclude", action="append", default=[], help="glob/regex; repeatable")
    p.add_argument("--skip-first-conv", action="store_true", help="keep the first conv dense")
    p.add_argument("--min-saving", type=float, default=0.0,
                   help="keep a layer dense unless it saves at least this fraction (0)")
    p.add_argument("--input-shape", default=None, help="C,H,W for MACs (default: model's)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--in-channels", type=int, default=None)
    add_model_arg(p)
    p.add_argument("--out", required=True, help="output directory (model.safetensors + json)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "decompose", help="factorize a model's layers and save it",
        description="Replace conv/linear layers by low-rank factorizations chosen by a rank "
                    "policy, print the per-layer report and save with rankwise.save.")
    add_arguments(p)
    p.set_defaults(func=decompose_command)

