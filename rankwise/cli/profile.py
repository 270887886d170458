"""`rankwise profile MODEL_OR_SAVED_PATH`: params / MACs table and latency of a model (any
`rankwise.models.build_model` spec or a saved folder)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankwise.errors import ConfigError


def parse_shape(text: str) -> tuple[int, ...]:
    """`"3,32,32"` → `(3, 32, 32)`; raises `ConfigError` on anything else."""
    try:
        shape = tuple(int(s) for s in str(text).replace("x", ",").split(",") if s.strip())
    except ValueError as e:
        raise ConfigError(f"--input-shape {text!r}: expected comma-separated ints like 3,32,32") \
            from e
    if not shape or min(shape) < 1:
        raise ConfigError(f"--input-shape {text!r}: expected positive ints like 3,32,32")
    return shape


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """`create_model` keyword arguments from `--model-arg K=V`, `--num-classes`, `--in-channels`."""
    kw: dict[str, Any] = {}
    for item in getattr(args, "model_arg", None) or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-arg {item!r}: expected KEY=VALUE, e.g. width=32")
        try:
            kw[key] = json.loads(value)
        except json.JSONDecodeError:
            kw[key] = value
    if getattr(args, "num_classes", None) is not None:
        kw["num_classes"] = args.num_classes
    if getattr(args, "in_channels", None) is not None:
        kw["in_channels"] = args.in_channels
    return kw


def default_shape(arch: str, kwargs: dict[str, Any],
                  model: nn.Module | None = None) -> tuple[int, ...]:
    """The input shape (no batch dim) model spec `arch` is built for, with the channel count
    replaced by `in_channels` if given; `ConfigError` when the spec has no known default."""
    from rankwise.models.resolve import default_input_shape

    found = default_input_shape(arch, model)
    if found is None:
        raise ConfigError(f"model {arch!r} has no default input shape; pass --input-shape, "
                          "e.g. 3,224,224")
    shape = tuple(int(s) for s in found)
    if "in_channels" in kwargs and len(shape) == 3:
        shape = (int(kwargs["in_channels"]), *shape[1:])
    return shape


def resolve_target(target: str, args: argparse.Namespace
                   ) -> tuple[nn.Module, nn.Module | None, tuple[int, ...]]:
    """(model, dense baseline or None, input shape) for a saved path or a model spec (zoo name,
    tv:NAME, timm:NAME, hf:NAME_OR_PATH, package.module:factory; see `build_model`)."""
    from rankwise import io
    from rankwise.compress.artifact import load_compressed
    from rankwise.io.onnx_folder import is_onnx_folder, read_onnx_info
    from rankwise.models import build_model

    shape = parse_shape(args.input_shape) if args.input_shape else None
    if is_onnx_folder(target) and not (Path(target) / io.CONFIG).is_file():
        source = read_onnx_info(target).get("source") or "SOURCE"
        raise ConfigError(f"{target} is an ONNX copy; profile the model it was exported from: "
                          f"rankwise profile {source} --runtime onnxruntime")
    if Path(target).exists():
        model = load_compressed(target)
        config = io.read_config(target)
        baseline = None
        if config.get("arch") and config.get("factorized"):
            baseline = build_model(config["arch"], **config.get("arch_kwargs", {}))
        return model, baseline, shape or io.saved_input_shape(target) or _need_shape(target)
    kw = model_kwargs(args)
    model = build_model(target, **kw)
    return model, None, shape or default_shape(target, kw, model)


def deploy_settings(target: str, args: argparse.Namespace) -> tuple[str, bool]:
    """(precision, deploy) to time `target` in: what the flags say, else for a `rankwise export`
    bf16/fp32 copy its own deployment (`meta.deploy`), else fp32 eager."""
    from rankwise import io

    saved = {}
    if (Path(target) / io.CONFIG).is_file():
        saved = (io.read_config(target).get("meta") or {}).get("deploy") or {}
    eager = args.runtime == "torch"  # ONNX Runtime times the float32 graph
    precision = args.precision or (saved.get("precision") if eager else None) or "fp32"
    return precision, bool(args.deploy or (saved and eager))


def _need_shape(target: str) -> tuple[int, ...]:
    raise ConfigError(f"{target} stores no input shape; pass --input-shape, e.g. 3,32,32")


def profile_command(args: argparse.Namespace) -> int:
    from rankwise.analysis.profile import profile_model
    from rankwise.models.resolve import example_inputs

    model, baseline, shape = resolve_target(args.target, args)
    precision, deploy = deploy_settings(args.target, args)
    batch_sizes = parse_shape(args.batch_sizes)
    inputs = example_inputs(model, shape)  # token ids for HF text models, else zeros
    prof = profile_model(model, shape, baseline=baseline, latency=not args.no_latency,
                         batch_sizes=batch_sizes, device=args.device,
                         min_run_time=args.min_run_time,
                         example_inputs=None if isinstance(inputs, torch.Tensor) else inputs,
                         precision=precision, runtime=args.runtime, deploy=deploy)
    if args.json:
        from rankwise.io.atomic import json_text

        print(json_text(prof.to_dict()))
    else:
        prof.print()
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "profile", help="params, MACs and latency of a model",
        description="Per-layer params/MACs table and latency of a model: a zoo name (resnet20), "
                    "tv:NAME, timm:NAME, hf:NAME_OR_PATH, package.module:factory, or a folder "
                    "saved with rankwise.save / rankwise decompose.")
    p.add_argument("target", metavar="MODEL_OR_PATH",
                   help="model spec (resnet20, tv:resnet50, timm:vit_tiny_patch16_224, hf:gpt2, "
                        "pkg.mod:factory) or saved dir")
    p.add_argument("--input-shape", default=None,
                   help="C,H,W without batch, or T (tokens) for text models (default: model's)")
    p.add_argument("--no-latency", action="store_true", help="skip the timing runs")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="latency in fp32 or under bf16 autocast (default fp32; a `rankwise "
                        "export` copy: its own precision, deployed)")
    p.add_argument("--deploy", action="store_true",
                   help="time the deployed copy (BN folded, weights and activations in "
                        "--precision, channels_last; what `rankwise export` writes) instead of "
                        "autocast over float32 weights; the dense baseline likewise (the "
                        "default for a `rankwise export` copy)")
    p.add_argument("--runtime", choices=("torch", "onnxruntime"), default="torch",
                   help="time eager PyTorch, or the model exported to a float32 ONNX graph in "
                        "ONNX Runtime (needs the export extra; fp32 only)")
    p.add_argument("--json", action="store_true", help="print plain JSON instead of a table")
    p.add_argument("--batch-sizes", default="1,8", help="batch sizes to time (default 1,8)")
    p.add_argument("--min-run-time", type=float, default=0.2, help="seconds per timing (0.2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--in-channels", type=int, default=None)
    add_model_arg(p)
    p.set_defaults(func=profile_command)


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model option, JSON value (e.g. width=16, n_layer=2); repeatable")
