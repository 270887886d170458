"""`rankwise decompose --dataset/--finetune`: the pre-train paradigm's data side (evaluate,
fine-tune `OUT/finetune`) and the report/accuracy printing it shares with the plain command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankwise.analysis.precision import TRAIN_PRECISIONS
from rankwise.errors import ConfigError


def decompose_with_data(args: argparse.Namespace, source: Any, shape: tuple[int, ...],
                         fmt: str | None, options: dict[str, Any], out: Path
                         ) -> tuple[nn.Module, dict[str, Any]]:
    """The pre-train paradigm: `decompose_and_finetune` on `--dataset` (or the run's dataset)."""
    from rankwise.cli.train import load_split
    from rankwise.train import TrainConfig
    from rankwise.train.pretrain import decompose_and_finetune

    spec = dataset_spec(args, source, shape)
    train_data = load_split(spec, True, args.data_dir, args.download, args.limit_train)
    test_data = load_split(spec, False, args.data_dir, args.download, args.limit_test)
    if tuple(train_data.shape) != tuple(shape):
        raise ConfigError(f"dataset {spec['name']} gives {train_data.shape} images but the model "
                          f"takes {tuple(shape)}; pick the dataset the model was trained on")
    cfg = TrainConfig(epochs=max(args.finetune, 1), batch_size=args.batch_size, lr=args.lr,
                      momentum=args.momentum, weight_decay=args.wd, schedule=args.schedule,
                      warmup_epochs=args.warmup, seed=args.seed, device=args.device,
                      augment=not args.no_augment, num_threads=args.num_threads,
                      quiet=args.quiet or args.json, log_every=args.log_every,
                      precision=args.precision, channels_last=args.channels_last)
    meta = {"model": {"name": source.arch, "kwargs": source.arch_kwargs},
            "input_shape": list(shape), "dataset": spec, "method": "decompose+finetune",
            "source": source.path, "decompose": {"format": args.format, "rank": str(args.rank)}}
    model, data = decompose_and_finetune(
        source.model, train_data, test_data, format=fmt, rank=args.rank, epochs=args.finetune,
        train_cfg=cfg, out_dir=out, resume=args.resume, meta=meta, **options)
    data["dataset"] = spec
    return model, data


def dataset_spec(args: argparse.Namespace, source: Any,
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


def accuracy_line(data: dict[str, Any]) -> str:
    """`test accuracy: before 91.20% → decomposed 45.10% → fine-tuned (3 ep) 90.30%`."""
    acc = data["accuracy"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    text = f"test accuracy: before {pct(acc['before'])} → decomposed {pct(acc['decomposed'])}"
    if data.get("finetune"):
        text += f" → fine-tuned ({data['finetune']['epochs']} ep) {pct(acc['finetuned'])}"
    return text


def accuracy_markdown(data: dict[str, Any]) -> str:
    return "" if "accuracy" not in data else "\n" + accuracy_line(data) + "\n"


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
    g.add_argument("--precision", choices=TRAIN_PRECISIONS, default="fp32",
                   help="fine-tuning precision (bf16: autocast, fp32 master weights; auto: bf16 "
                        "where the device computes it natively, else fp32)")
    g.add_argument("--channels-last", action="store_true", help="NHWC while fine-tuning")
