"""`rankwise export MODEL_DIR OUT`: a deployment copy of a saved model.

`--format rankwise` (default): OUT holds the float32 weights (loadable by `rankwise.load`) and the
deployment settings (`meta["deploy"]`: precision, bf16 by default, channels_last, folded
BatchNorm) that `rankwise.io.export_precision.load_deploy(OUT)` applies.
`--format onnx`: OUT holds `model.onnx` (float32, dynamic batch; `rankwise.io.onnx_file`) and
`onnx.json` (source, input shape, input names), for ONNX Runtime.
`--check` runs the copy and the float32 model on random inputs and prints the largest output
difference relative to the largest output entry.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch


def _relative_diff(ref: Any, got: Any) -> float:
    from rankwise.io.onnx_file import first_tensor  # HF outputs: logits or the first tensor

    ref, got = first_tensor(ref), first_tensor(got)
    scale = float(ref.abs().max().clamp_min(1e-12))
    return float((got.float() - ref.float()).abs().max()) / scale


def export_command(args: argparse.Namespace) -> int:
    from rankwise import io
    from rankwise.cli import output_of
    from rankwise.compress.artifact import load_compressed  # plain or `compress` output
    from rankwise.errors import ConfigError
    from rankwise.io import atomic as aio
    from rankwise.io import onnx_folder
    from rankwise.io.export_precision import load_deploy, save_deploy
    from rankwise.models.resolve import example_inputs, random_inputs

    onnx = args.format == "onnx"
    if onnx and args.precision not in (None, "fp32"):
        raise ConfigError(f"--precision {args.precision}: the ONNX copy is float32 (ONNX Runtime's "
                          "CPU convolutions have no bf16 kernels); drop --precision or use "
                          "--format rankwise")
    precision = args.precision or ("fp32" if onnx else "bf16")
    out = aio.check_replaceable(args.out, replace_if := output_of("export", *onnx_folder.FILES))
    config = io.read_config(args.path)
    model = load_compressed(args.path).eval()
    shape = io.saved_input_shape(args.path)
    if onnx and shape is None:
        raise ConfigError(f"{args.path}: model.json records no input shape, which the ONNX "
                          "trace needs; save the model with input_shape=(C, H, W)")
    example = None if shape is None else example_inputs(model, shape)
    with aio.atomic_dir(out, replace_if=replace_if) as tmp:
        if onnx:
            onnx_folder.write_onnx_folder(model, tmp, example, args.path, shape,
                                          _export_meta(config, args.path))
        else:
            save_deploy(model, tmp, precision=precision,
                        channels_last=not args.no_channels_last, fold_bn=not args.no_fold_bn,
                        arch=config.get("arch"), arch_kwargs=config.get("arch_kwargs"),
                        input_shape=shape, meta=_export_meta(config, args.path))
    summary: dict[str, Any] = {"path": str(args.path), "out": str(out), "format": args.format,
                               "precision": precision}
    if args.check and example is not None:
        x = random_inputs(example, model, seed=0)
        deployed = onnx_folder.load_onnx_folder(out)[0] if onnx else load_deploy(out)
        with torch.no_grad():
            ref = model(**x) if isinstance(x, dict) else model(x)
            got = deployed(**x) if isinstance(x, dict) else deployed(x)
        summary["max_abs_diff_vs_fp32_relative"] = _relative_diff(ref, got)
    print(aio.json_text(summary))
    return 0


def _export_meta(config: dict[str, Any], source: str) -> dict[str, Any]:
    """The source's `meta` for the float32 copy, without `compressed` (the copy holds plain
    float32 weights, no int8 or coded artifact), with `command` and `source` set."""
    meta = {k: v for k, v in (config.get("meta") or {}).items() if k != "compressed"}
    return {**meta, "command": "export", "source": str(source)}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export", help="write a deployment copy (bf16 / channels_last / folded BN, or ONNX)",
        description="Save MODEL_DIR again with deployment settings that load_deploy applies, "
                    "or as a float32 ONNX graph for ONNX Runtime (--format onnx).")
    p.add_argument("path", help="a directory written by rankwise.save / decompose / train / "
                   "compress (int8 and entropy-coded weights are exported dequantized)")
    p.add_argument("out", help="output directory")
    p.add_argument("--format", choices=("rankwise", "onnx"), default="rankwise",
                   help="rankwise: model files + deployment settings; onnx: model.onnx "
                        "(float32, needs the export extra)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="rankwise format: bf16 (default) or fp32; onnx: fp32 only")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW")
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm layers")
    p.add_argument("--check", action="store_true",
                   help="run the float32 model and the copy on random inputs and print the "
                        "largest output difference (relative)")
    p.set_defaults(func=export_command)
