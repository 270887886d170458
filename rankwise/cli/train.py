"""`rankwise train`: train a zoo model on a dataset, densely or with a `--method`, into `--out`.

Writes `config.json` (train config, model name + kwargs, dataset, method + its config),
`checkpoint.pt` (every epoch), `metrics.jsonl`, `model.safetensors` + `model.json`
(`rankwise.load(out)` rebuilds the model) and `summary.json`; prints a summary table.
Under `torchrun --nproc_per_node=N -m rankwise train ...` it trains with DDP.
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import Any

import torch

from rankwise.errors import ConfigError


def parse_milestones(text: str) -> list[int]:
    """`"82,122"` → `[82, 122]` (epochs); empty string → `[]`."""
    try:
        return [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError as e:
        raise ConfigError(f"--milestones {text!r}: expected comma-separated epochs like 82,122") \
            from e


def dataset_spec(args: argparse.Namespace, model: str | None = None) -> dict[str, Any]:
    """How to rebuild the data of this run: `{"name", "kwargs", "limit_train", "limit_test"}`.

    `synthetic` uses the model's default input shape so that e.g. lenet5 gets 1x28x28 images.
    """
    kwargs: dict[str, Any] = {}
    if args.dataset == "synthetic":
        shape = [3, 32, 32]
        if model is not None:
            from rankwise.models import default_input_shape

            shape = list(default_input_shape(model))
        kwargs = {"size": args.synthetic_size, "shape": shape, "num_classes": 10, "seed": 0}
    return {"name": args.dataset, "kwargs": kwargs, "limit_train": args.limit_train,
            "limit_test": args.limit_test}


def load_split(spec: dict[str, Any], train: bool, data_dir: str | None = None,
               download: bool = False, limit: int | None = None):
    """One split of the dataset described by `spec` (see `dataset_spec`), cut to `limit`."""
    from rankwise.data import load_dataset

    kwargs = dict(spec.get("kwargs") or {})
    if "shape" in kwargs:
        kwargs["shape"] = tuple(kwargs["shape"])
    data = load_dataset(spec["name"], train, data_dir=data_dir, download=download, **kwargs)
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit-train/--limit-test must be >= 1, got {limit}")
        data = data.subset(slice(0, limit))
    return data


def model_kwargs_for(name: str, data, width: int | None) -> dict[str, Any]:
    """`create_model` kwargs matching `data`: classes, channels, `image_size` (if the model
    takes one and the images are not its default size) and `width`."""
    from rankwise.models import MODELS, default_input_shape

    c, h, w = data.shape
    kwargs: dict[str, Any] = {"num_classes": int(data.num_classes), "in_channels": int(c)}
    key = name.lower().replace("-", "").replace("_", "")
    accepted = set(inspect.signature(MODELS[key][0]).parameters) if key in MODELS else set()
    if (h, w) != tuple(default_input_shape(name)[1:]) and "image_size" in accepted:
        if h != w:
            raise ConfigError(f"model {name!r} takes square images; dataset gives {h}x{w}")
        kwargs["image_size"] = int(h)
    if width is not None:
        kwargs["width"] = int(width)
    return kwargs


def train_config_from_args(args: argparse.Namespace):
    from rankwise.train import TrainConfig

    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        nesterov=args.nesterov, weight_decay=args.wd, wd_on_bn_bias=not args.no_wd_on_bn_bias,
        schedule=args.schedule, milestones=parse_milestones(args.milestones), gamma=args.gamma,
        warmup_epochs=args.warmup, label_smoothing=args.label_smoothing, seed=args.seed,
        device=args.device, precision=args.precision, channels_last=args.channels_last,
        compile=args.compile, augment=not args.no_augment, log_every=args.log_every,
        eval_every=args.eval_every, num_threads=args.num_threads, quiet=args.quiet,
        tensorboard=args.tensorboard)


def train_command(args: argparse.Namespace) -> int:
    from rankwise.methods import get_method
    from rankwise.models import create_model
    from rankwise.train import Trainer

    method = get_method(args.method)
    method_cfg = method.config_from_args(args)
    cfg = train_config_from_args(args)
    spec = dataset_spec(args, args.model)
    train_data = load_split(spec, True, args.data_dir, args.download, args.limit_train)
    test_data = load_split(spec, False, args.data_dir, args.download, args.limit_test)
    kwargs = model_kwargs_for(args.model, train_data, args.width)
    torch.manual_seed(args.seed)
    if getattr(method, "builds_on_meta", False):
        # Methods that replace layers before training (ELRT) never need the dense weights:
        # build the base on the meta device so they are never allocated.
        with torch.device("meta"):
            model = create_model(args.model, **kwargs)
    else:
        model = create_model(args.model, **kwargs)
    model = method.prepare_model(model, method_cfg, train_data.shape)
    meta = {"model": {"name": args.model, "kwargs": kwargs}, "input_shape": list(train_data.shape),
            "dataset": spec, "method": method.name,
            "method_config": method.config_to_dict(method_cfg)}
    trainer = Trainer(model, cfg, train_data, test_data, args.out, hooks=method.hooks(method_cfg),
                      optimizer=method.make_optimizer(model, cfg, method_cfg), meta=meta)
    metrics = trainer.fit(resume=args.resume)
    report = method.finalize(trainer, method_cfg)
    if not trainer.is_main:
        return 0
    summary = {"out": str(args.out), "model": args.model, "dataset": args.dataset,
               "method": method.name, "params": sum(p.numel() for p in trainer.model.parameters()),
               **metrics, "method_report": report}
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print_summary(summary, quiet=args.quiet)
    return 0


def print_summary(summary: dict[str, Any], quiet: bool = False) -> None:
    """A rich table of the final metrics (one line of JSON-ish text when `quiet`)."""
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
    p.add_argument("--data-dir", default=None, help="where the dataset files are")
    p.add_argument("--download", action="store_true", help="download a missing dataset")
    p.add_argument("--synthetic-size", type=int, default=512,
                   help="samples per split of --dataset synthetic (default 512)")


def register(subparsers: Any) -> None:
    from rankwise.methods import METHODS

    p = subparsers.add_parser(
        "train", help="train a model (dense or with a low-rank --method)",
        description="Train a zoo model; checkpoints every epoch (resume with --resume), "
                    "saves model.safetensors + model.json into --out. Use torchrun for DDP.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="zoo name, e.g. resnet20 (rankwise.models)")
    p.add_argument("--dataset", required=True,
                   help="mnist, fashion-mnist, cifar10, cifar100 or synthetic")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--method", default="dense", choices=sorted(METHODS))
    p.add_argument("--width", type=int, default=None, help="width multiplier/base width")
    add_data_arguments(p)
    p.add_argument("--limit-train", type=int, default=None, help="use the first N train samples")
    p.add_argument("--limit-test", type=int, default=None, help="use the first N test samples")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    o = p.add_argument_group("optimization")
    o.add_argument("--epochs", type=int, default=164)
    o.add_argument("--batch-size", type=int, default=128, help="global batch (all DDP ranks)")
    o.add_argument("--lr", type=float, default=0.1)
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--nesterov", action="store_true")
    o.add_argument("--wd", type=float, default=1e-4, help="weight decay")
    o.add_argument("--no-wd-on-bn-bias", action="store_true",
                   help="no weight decay on BatchNorm parameters and biases")
    o.add_argument("--schedule", choices=("step", "cosine", "none"), default="step")
    o.add_argument("--milestones", default="82,122", help="epochs where step decays lr")
    o.add_argument("--gamma", type=float, default=0.1, help="step decay factor")
    o.add_argument("--warmup", type=float, default=0.0, help="linear warm-up epochs")
    o.add_argument("--label-smoothing", type=float, default=0.0)
    o.add_argument("--no-augment", action="store_true", help="no crop/flip augmentation")
    r = p.add_argument_group("runtime")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: bfloat16 autocast on CPU (AVX-512-bf16/AMX) or CUDA")
    r.add_argument("--channels-last", action="store_true",
                   help="NHWC memory format (faster on CPU and CUDA)")
    r.add_argument("--compile", action="store_true", help="torch.compile the model")
    r.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    r.add_argument("--log-every", type=int, default=50, help="steps between metric lines")
    r.add_argument("--eval-every", type=int, default=1, help="epochs between test evaluations")
    r.add_argument("--tensorboard", action="store_true", help="also log to OUT/tb")
    r.add_argument("--quiet", action="store_true", help="no progress bar; one-line summary")
    for method in METHODS.values():
        group = p.add_argument_group(f"--method {method.name}", method.help or None)
        method.add_arguments(group)
    p.set_defaults(func=train_command)
