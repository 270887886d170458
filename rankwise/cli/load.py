"""`rankwise load PATH`: rebuild a saved model, run it once on zeros and print its summary."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from rankwise.cli.profile import parse_shape
from rankwise.errors import ConfigError


def load_command(args: argparse.Namespace) -> int:
    from rankwise import io
    from rankwise.analysis.macs import call_model
    from rankwise.analysis.profile import profile_model
    from rankwise.compress.artifact import load_compressed
    from rankwise.models.resolve import default_input_shape, example_inputs

    # Plain saved models and `rankwise compress` outputs (int8 / entropy-coded) alike.
    model = load_compressed(args.path, map_location=args.map_location)
    config = io.read_config(args.path)
    shape = parse_shape(args.input_shape) if args.input_shape else io.saved_input_shape(args.path)
    if shape is None and config.get("arch"):  # timm / hf specs: the default needs the model
        shape = default_input_shape(config["arch"], model)
    if shape is None:
        raise ConfigError(f"{args.path} stores no input shape; pass --input-shape, e.g. 3,32,32")
    inputs = example_inputs(model, shape)  # token ids for HF text models, else zeros
    try:
        with torch.no_grad():
            out = call_model(model, inputs)
    except RuntimeError as e:
        raise ConfigError(f"{args.path}: the model does not run on inputs of shape {tuple(shape)} "
                          f"({str(e).splitlines()[0]}); pass the right --input-shape C,H,W") from e
    out_shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    prof = profile_model(model, shape, latency=False, device=args.map_location,
                         example_inputs=None if isinstance(inputs, torch.Tensor) else inputs)
    summary = {
        "path": str(args.path),
        "arch": config.get("arch"),
        "arch_kwargs": config.get("arch_kwargs"),
        "rankwise_version": config.get("rankwise_version"),
        "input_shape": list(shape),
        "output_shape": list(out_shape) if isinstance(out_shape, tuple) else out_shape,
        "factorized_layers": len(config.get("factorized", {})),
        "params": prof.params,
        "macs": prof.macs,
        "meta": config.get("meta", {}),
    }
    if args.json:
        from rankwise.io.atomic import json_text

        print(json_text(summary))
        return 0
    prof.print()
    print(f"{args.path}: arch={summary['arch']} {summary['arch_kwargs']}, "
          f"{summary['factorized_layers']} factorized layers, params {prof.params:,}, "
          f"MACs {prof.macs:,}; forward on zeros {(1, *shape)} → output {out_shape}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "load", help="rebuild a saved model and check it runs",
        description="Rebuild a model saved by rankwise.save (never unpickles), run one forward "
                    "pass on zeros of its saved input shape and print its summary.")
    p.add_argument("path", help="directory with model.json + model.safetensors")
    p.add_argument("--map-location", default="cpu")
    p.add_argument("--input-shape", default=None, help="override the saved C,H,W")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=load_command)
