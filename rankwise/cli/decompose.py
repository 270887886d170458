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

import torch
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
            dataset = (config.get("meta") or {}).get("dataset")
            return Source(model, arch, config.get("arch_kwargs") or kw,
                          io.saved_input_shape(saved), str(saved),
                          dataset if isinstance(dataset, dict) else None)
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
    dataset = config.get("dataset")
    return Source(model, arch, arch_kwargs, tuple(shape) if shape else None, str(run),
                  dataset if isinstance(dataset, dict) else None)


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
    """Load → [evaluate] → `decompose` → [evaluate → fine-tune → evaluate] →
    `after_decompose` → `io.save` → print the report."""
    from rankwise import io
    from rankwise.surgery.decompose import decompose

    source = load_source(args)
    shape = input_shape_of(args, source)
    options = dict(include=args.include or None, exclude=args.exclude or None, inplace=True,
                   input_shape=shape, skip_first_conv=args.skip_first_conv,
                   linear_format=None if args.linear_format == "none" else args.linear_format,
                   min_saving=args.min_saving)
    fmt = None if args.format == "none" else args.format
    out = Path(args.out)
    if args.finetune < 0:
        raise ConfigError(f"--finetune {args.finetune}: pass a number of epochs >= 0")
    if args.finetune > 0 or args.dataset:
        model, data = _decompose_with_data(args, source, shape, fmt, options, out)
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
    io.save(model.cpu(), out, arch=source.arch, arch_kwargs=source.arch_kwargs,
            input_shape=shape, meta=meta)
    (out / "decompose_report.json").write_text(json.dumps(data, indent=2, default=str))
    (out / "decompose_report.md").write_text(report.to_markdown() + _accuracy_markdown(data))
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        report.print()
        if "accuracy" in data:
            print(_accuracy_line(data))
        print(f"saved to {out}")
    return 0


def _decompose_with_data(args: argparse.Namespace, source: Source, shape: tuple[int, ...],
                         fmt: str | None, options: dict[str, Any], out: Path
                         ) -> tuple[nn.Module, dict[str, Any]]:
    """The pre-train paradigm: `decompose_and_finetune` on `--dataset` (or the run's dataset)."""
    from rankwise.cli.train import load_split
    from rankwise.train import TrainConfig
    from rankwise.train.pretrain import decompose_and_finetune

    spec = _dataset_spec(args, source, shape)
    train_data = load_split(spec, True, args.data_dir, args.download, args.limit_train)
    test_data = load_split(spec, False, args.data_dir, args.download, args.limit_test)
    if tuple(train_data.shape) != tuple(shape):
        raise ConfigError(f"dataset {spec['name']} gives {train_data.shape} images but the model "
                          f"takes {tuple(shape)}; pick the dataset the model was trained on")
    cfg = TrainConfig(epochs=max(args.finetune, 1), batch_size=args.batch_size, lr=args.lr,
                      momentum=args.momentum, weight_decay=args.wd, schedule=args.schedule,
                      warmup_epochs=args.warmup, seed=args.seed, device=args.device,
                      augment=not args.no_augment, num_threads=args.num_threads,
                      quiet=args.quiet or args.json, log_every=args.log_every)
    meta = {"model": {"name": source.arch, "kwargs": source.arch_kwargs},
            "input_shape": list(shape), "dataset": spec, "method": "decompose+finetune",
            "source": source.path, "decompose": {"format": args.format, "rank": str(args.rank)}}
    model, data = decompose_and_finetune(
        source.model, train_data, test_data, format=fmt, rank=args.rank, epochs=args.finetune,
        train_cfg=cfg, out_dir=out, resume=args.resume, meta=meta, **options)
    data["dataset"] = spec
    return model, data


def _dataset_spec(args: argparse.Namespace, source: Source,
                  shape: tuple[int, ...]) -> dict[str, Any]:
    """`--dataset` (synthetic: images of the model's input shape), else the run's dataset."""
    if args.dataset:
        kwargs: dict[str, Any] = {}
        if args.dataset == "synthetic":
            classes = int(source.arch_kwargs.get("num_classes", 10))
            kwargs = {"size": args.synthetic_size, "shape": list(shape), "num_classes": classes,
                      "seed": 0}
        return {"name": args.dataset, "kwargs": kwargs}
    if source.dataset and source.dataset.get("name"):
        return {"name": source.dataset["name"], "kwargs": dict(source.dataset.get("kwargs") or {})}
    raise ConfigError(f"--finetune needs data: pass --dataset NAME (mnist, fashion-mnist, "
                      f"cifar10, cifar100, synthetic); {source.path or 'the model'} does not "
                      "record the dataset it was trained on")


def report_from_dict(data: dict[str, Any]) -> Any:
    """A `DecomposeReport` rebuilt from its `to_dict()` (extra keys ignored), for printing."""
    from rankwise.surgery.decompose import DecomposeReport, LayerRow

    rows = []
    for r in data["rows"]:
        rank = r.get("rank")
        rows.append(LayerRow(
            name=r["name"], type=r["type"], dense_shape=tuple(r["dense_shape"]),
            format=r["format"], rank=tuple(rank) if isinstance(rank, list) else rank,
            params_before=r["params_before"], params_after=r["params_after"],
            macs_before=r["macs_before"], macs_after=r["macs_after"], note=r.get("note", "")))
    t = data["totals"]
    return DecomposeReport(rows, format=data.get("format"), linear_format=data.get("linear_format"),
                           policy=data.get("policy", ""), model_params_before=t["params_before"],
                           model_params_after=t["params_after"],
                           model_macs_before=t["macs_before"], model_macs_after=t["macs_after"])


def _accuracy_line(data: dict[str, Any]) -> str:
    """`test accuracy: before 91.20% → decomposed 45.10% → fine-tuned (3 ep) 90.30%`."""
    acc = data["accuracy"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    text = f"test accuracy: before {pct(acc['before'])} → decomposed {pct(acc['decomposed'])}"
    if data.get("finetune"):
        text += f" → fine-tuned ({data['finetune']['epochs']} ep) {pct(acc['finetuned'])}"
    return text


def _accuracy_markdown(data: dict[str, Any]) -> str:
    return "" if "accuracy" not in data else "\n" + _accuracy_line(data) + "\n"


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
    add_finetune_arguments(p)


def add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    """`--finetune N`, `--dataset` and the fine-tuning recipe (pre-train paradigm)."""
    from rankwise.cli.train import add_data_arguments

    g = p.add_argument_group(
        "evaluate and fine-tune (pre-train paradigm)",
        "with --dataset or --finetune N: test accuracy before/after decomposition and after N "
        "epochs of fine-tuning (run dir OUT/finetune)")
    g.add_argument("--finetune", type=int, default=0, metavar="N",
                   help="fine-tune the factorized model N epochs (default 0: none)")
    g.add_argument("--dataset", default=None,
                   help="mnist, fashion-mnist, cifar10, cifar100 or synthetic (default: the "
                        "dataset recorded by the `rankwise train` run of --checkpoint)")
    add_data_arguments(g)
    g.add_argument("--limit-train", type=int, default=None, help="use the first N train samples")
    g.add_argument("--limit-test", type=int, default=None, help="use the first N test samples")
    g.add_argument("--lr", type=float, default=0.01, help="fine-tuning lr (default 0.01)")
    g.add_argument("--schedule", choices=("step", "cosine", "none"), default="cosine",
                   help="lr schedule over the N epochs (default cosine)")
    g.add_argument("--warmup", type=float, default=0.0, help="linear warm-up epochs (0)")
    g.add_argument("--batch-size", type=int, default=128, help="(default 128)")
    g.add_argument("--momentum", type=float, default=0.9, help="(default 0.9)")
    g.add_argument("--wd", type=float, default=1e-4, help="weight decay (default 1e-4)")
    g.add_argument("--no-augment", action="store_true", help="no crop/flip augmentation")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--log-every", type=int, default=50, help="steps between metric lines")
    g.add_argument("--resume", action="store_true",
                   help="continue the fine-tuning from OUT/finetune/checkpoint.pt")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "decompose", help="factorize a model's layers and save it",
        description="Replace conv/linear layers by low-rank factorizations chosen by a rank "
                    "policy, print the per-layer report and save with rankwise.save.")
    add_arguments(p)
    p.set_defaults(func=decompose_command)

