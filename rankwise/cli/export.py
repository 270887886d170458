"""`rankwise export MODEL_DIR OUT --precision bf16`: a deployment copy of a saved model.

OUT holds the float32 weights (loadable by `rankwise.load`) and the deployment settings
(`meta["deploy"]`: precision, channels_last, folded BatchNorm) that
`rankwise.io.export_precision.load_deploy(OUT)` applies; `--check` runs both on zeros and prints
the largest output difference against float32.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch


def export_command(args: argparse.Namespace) -> int:
    from rankwise import io
    from rankwise.cli import output_of
    from rankwise.io import atomic as aio
    from rankwise.io.export_precision import load_deploy, save_deploy
    from rankwise.models.resolve import example_inputs

    out = aio.check_replaceable(args.out, replace_if := output_of("export"))
    config = io.read_config(args.path)
    model = io.load(args.path).eval()
    shape = io.saved_input_shape(args.path)
    with aio.atomic_dir(out, replace_if=replace_if) as tmp:
        save_deploy(model, tmp, precision=args.precision,
                    channels_last=not args.no_channels_last, fold_bn=not args.no_fold_bn,
                    arch=config.get("arch"), arch_kwargs=config.get("arch_kwargs"),
                    input_shape=shape, meta={**(config.get("meta") or {}), "command": "export"})
    summary: dict[str, Any] = {"path": str(args.path), "out": str(out),
                               "precision": args.precision}
    if args.check and shape is not None:
        deployed = load_deploy(out)
        x = example_inputs(model, shape)
        with torch.no_grad():
            ref, got = model(x), deployed(x)
        scale = float(ref.abs().max().clamp_min(1e-12))
        summary["max_abs_diff_vs_fp32_relative"] = float((got.float() - ref).abs().max()) / scale
    print(aio.json_text(summary))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export", help="write a deployment copy (bf16 / channels_last / folded BN)",
        description="Save MODEL_DIR again with deployment settings that load_deploy applies.")
    p.add_argument("path", help="a directory written by rankwise.save / decompose / train")
    p.add_argument("out", help="output directory")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW")
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm layers")
    p.add_argument("--check", action="store_true",
                   help="run fp32 and the deployed copy once and print the output difference")
    p.set_defaults(func=export_command)
