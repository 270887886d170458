"""`rankwise decompose`: factorize a (trained) model and save it with `rankwise.save`.

With `--dataset NAME` and/or `--finetune N` this is the pre-train paradigm end to end
(`rankwise.pretrain.decompose_and_finetune`): test accuracy before decomposition, right after,
and after fine-tuning N epochs (SGD lr 0.01, cosine; the trainer's run directory is
`OUT/finetune`, resumable with `--resume`); the fine-tuned factorized model is saved into OUT and
`OUT/decompose_report.json` holds the decomposition report plus `accuracy`/`loss` per stage.
Without `--dataset`, a checkpoint written by `rankwise train` supplies its own dataset.

Extension points: `add_arguments(parser)` builds the options, `load_source(args)` the input
model, `after_decompose(args, model, report, source)` runs between surgery (and fine-tuning)
and saving (identity here), and `decompose_command(args)` ties them together.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from rankwise.cli.decompose_data import (
    accuracy_line,
    accuracy_markdown,
    add_finetune_arguments,
    decompose_with_data,
    report_from_dict,
)
from rankwise.cli.profile import add_model_arg, default_shape, model_kwargs, parse_shape
from rankwise.errors import CheckpointError, ConfigError
from rankwise.io.state_file import load_state_file


@dataclass
class Source:
    """The model to decompose and what is needed to save it again."""

    model: nn.Module
    arch: str | None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    path: str | None = None
    dataset: dict[str, Any] | None = None  # `rankwise train`'s dataset spec, when recorded


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
            dataset = (config.get("meta") or {}).get("dataset")
            return Source(model, arch, config.get("arch_kwargs") or kw,
                          io.saved_input_shape(saved), str(saved),
                          dataset if isinstance(dataset, dict) else None)
        if ckpt.suffix == ".safetensors" and ckpt.is_file():
            model = _create(args.model, kw)
            load_state_file(model, ckpt, "pass the --model (and --model-arg, --num-classes) the "
                            "weights were trained with")
            return Source(model, args.model, kw, None, str(ckpt))
        raise CheckpointError(f"{ckpt}: expected a directory saved by rankwise.save or a "
                              ".safetensors state dict (pickled .pt files are not read)")
    if not args.model:
        raise ConfigError("pass --model SPEC (and optionally --checkpoint PATH)")
    return Source(_create(args.model, kw), args.model, kw, None, None)


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
    dataset = config.get("dataset")
    return Source(model, arch, arch_kwargs, tuple(shape) if shape else None, str(run),
                  dataset if isinstance(dataset, dict) else None)


def _create(name: str | None, kw: dict[str, Any]) -> nn.Module:
    """A zoo name, `tv:NAME`, `timm:NAME`, `hf:NAME_OR_PATH` or `package.module:factory`."""
    from rankwise.models import build_model

    if not name:
        raise ConfigError("this checkpoint does not name its architecture; pass --model SPEC")
    return build_model(name, **kw)


def format_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """`--format-option cp.n_iter_max=50` (repeatable) → `{"cp": {"n_iter_max": 50}}`."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        fmt, dot, name = key.partition(".")
        if not (sep and dot and fmt and name):
            raise ConfigError(f"--format-option {item!r}: expected FORMAT.KEY=VALUE, e.g. "
                              "cp.n_iter_max=50")
        try:
            out.setdefault(fmt, {})[name] = json.loads(value)
        except json.JSONDecodeError:
            out.setdefault(fmt, {})[name] = value
    return out


def rank_of(args: argparse.Namespace) -> str:
    """`--rank`, or `budget:latency_ms=MS,precision=P[,runtime=R]` from `--target-latency MS`."""
    if args.target_latency is None:
        return args.rank
    if args.target_latency <= 0:
        raise ConfigError(f"--target-latency {args.target_latency}: pass milliseconds > 0")
    runtime = "" if args.latency_runtime == "torch" else f",runtime={args.latency_runtime}"
    return f"budget:latency_ms={args.target_latency:g},precision={args.latency_precision}{runtime}"


def after_decompose(args: argparse.Namespace, model: nn.Module, report: Any,
                    source: Source) -> nn.Module:
    """Hook between surgery (and fine-tuning, with `--finetune`) and saving; identity here."""
    return model


def input_shape_of(args: argparse.Namespace, source: Source) -> tuple[int, ...]:
    """`--input-shape`, else the saved/recorded shape, else the architecture's default."""
    if args.input_shape:
        return parse_shape(args.input_shape)
    if source.input_shape:
        return tuple(source.input_shape)
    if source.arch:
        return default_shape(source.arch, source.arch_kwargs)
    raise ConfigError("cannot tell the input shape; pass --input-shape, e.g. 3,32,32")


def decompose_command(args: argparse.Namespace) -> int:
    """Load → [evaluate] → `decompose` → [fine-tune] → `after_decompose` → save (OUT swapped in
    whole when complete, `OUT/finetune` carried over; a foreign OUT is refused) → report."""
    from rankwise import io
    from rankwise.cli import output_of
    from rankwise.io import atomic as aio
    from rankwise.surgery.decompose import decompose

    out = aio.check_replaceable(args.out, replace_if := output_of("decompose", "finetune"))
    args.rank = rank_of(args)
    source = load_source(args)
    shape = input_shape_of(args, source)
    from rankwise.models.resolve import example_inputs

    example = example_inputs(source.model, shape)
    options = dict(include=args.include or None, exclude=args.exclude or None, inplace=True,
                   example_inputs=example if isinstance(example, dict) else (example,),
                   format_options=format_options(args.format_option),
                   skip_first_conv=args.skip_first_conv,
                   linear_format=None if args.linear_format == "none" else args.linear_format,
                   min_saving=args.min_saving)
    fmt = None if args.format == "none" else args.format
    if args.finetune < 0:
        raise ConfigError(f"--finetune {args.finetune}: pass a number of epochs >= 0")
    if args.finetune > 0 or args.dataset:
        model, data = decompose_with_data(args, source, shape, fmt, options, out)
        report = report_from_dict(data)
    else:
        model, report = decompose(source.model, format=fmt, rank=args.rank, **options)
        data = report.to_dict()
    model = after_decompose(args, model, report, source)
    meta = {"command": "decompose", "source": source.path, "rank": str(args.rank),
            "format": args.format, "linear_format": args.linear_format,
            "totals": report.totals}
    if "accuracy" in data:
        meta.update(accuracy=data["accuracy"], dataset=data.get("dataset"),
                    finetune_epochs=args.finetune)
    with aio.atomic_dir(out, replace_if=replace_if, keep=("finetune",)) as tmp:
        io.save(model.cpu(), tmp, arch=source.arch, arch_kwargs=source.arch_kwargs,
                input_shape=shape, meta=meta)
        aio.atomic_write_json(tmp / "decompose_report.json", data)  # NaN/Inf → null
        aio.atomic_write_text(tmp / "decompose_report.md",
                              report.to_markdown() + accuracy_markdown(data))
    if args.json:
        print(aio.json_text(data))
    else:
        report.print()
        if "accuracy" in data:
            print(accuracy_line(data))
        print(f"saved to {out}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="zoo name (resnet20), tv:NAME, timm:NAME, hf:NAME_OR_PATH, module:factory")
    p.add_argument("--checkpoint", default=None,
                   help="saved model dir (rankwise.save), a run dir holding one, or .safetensors")
    p.add_argument("--format", default="tucker2",
                   help="conv format: tucker2|channel|spatial|cp|none; 1×1 convs always use "
                        "channel (default tucker2)")
    p.add_argument("--linear-format", default="svd", help="linear format: svd|tt|none")
    p.add_argument("--rank", default="energy:0.9",
                   help="energy:0.9, ratio:0.25, fixed:8, value:0.05, erank, stable, vbmf, "
                        "budget:params=0.3, budget:macs=0.3, budget:latency=0.5 (default "
                        "energy:0.9)")
    p.add_argument("--target-latency", type=float, default=None, metavar="MS",
                   help="measured-latency budget in ms at batch 8, 1 thread (replaces --rank)")
    p.add_argument("--latency-precision", choices=("fp32", "bf16"), default="fp32",
                   help="precision the --target-latency is measured in (default fp32)")
    p.add_argument("--latency-runtime", choices=("torch", "onnxruntime"), default="torch",
                   help="what the --target-latency is measured in: eager PyTorch (default) or "
                        "ONNX Runtime on float32 ONNX graphs (deploy with export --format onnx)")
    p.add_argument("--format-option", action="append", default=[], metavar="FMT.KEY=VALUE",
                   help="option of one format's from_dense, e.g. cp.n_iter_max=50; repeatable")
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
    add_finetune_arguments(p)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "decompose", help="factorize a model's layers and save it",
        description="Replace conv/linear layers by low-rank factorizations chosen by a rank "
                    "policy, print the per-layer report and save with rankwise.save.")
    add_arguments(p)
    p.set_defaults(func=decompose_command)

