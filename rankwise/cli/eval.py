"""`rankwise eval PATH`: test loss/accuracy of a run directory or a saved model.

PATH is a directory with `model.json` + `model.safetensors` (`rankwise.save`, or a finished
`rankwise train` run), or a run directory that only has `config.json` + `checkpoint.pt` (an
interrupted run: the model is rebuilt from the config, the method's `prepare_model` applied and
the checkpoint's weights loaded). A `rankwise export` output is evaluated as deployed: a bf16
copy with its bf16 weights and activations (`load_deploy`), an ONNX copy in ONNX Runtime. The
dataset defaults to the one the run was trained on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankwise.errors import CheckpointError, ConfigError


def _run_config(root: Path) -> dict[str, Any]:
    path = root / "config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the run directory is corrupt") \
            from e


def load_run_model(root: Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model of a saved model / run directory, and the metadata describing how it was
    trained (`{"dataset", "input_shape", "method", ...}`, possibly empty)."""
    from rankwise import io
    from rankwise.io.onnx_folder import is_onnx_folder, load_onnx_folder

    config = _run_config(root)
    if is_onnx_folder(root):
        if torch.device(device).type != "cpu":
            raise ConfigError(f"{root} is an ONNX copy, run by ONNX Runtime on CPU; pass "
                              "--device cpu")
        return load_onnx_folder(root)
    if (root / io.CONFIG).is_file():
        saved = io.read_config(root)
        meta = {"input_shape": saved.get("input_shape"), **(saved.get("meta") or {}), **config}
        if isinstance(meta.get("deploy"), dict):  # `rankwise export`: run it as deployed
            from rankwise.io.export_precision import load_deploy

            return load_deploy(root).to(device), meta
        from rankwise.compress.artifact import load_compressed  # plain or `compress` output

        return load_compressed(root, map_location=device), meta
    if not (root / "checkpoint.pt").is_file() or "model" not in config:
        raise CheckpointError(f"{root} holds neither model.json + model.safetensors nor "
                              "config.json + checkpoint.pt; pass a rankwise.save directory or a "
                              "`rankwise train --out` directory")
    from rankwise.models import create_model
    from rankwise.train.checkpoint import load_checkpoint
    from rankwise.train.recipes import get_recipe

    model = create_model(config["model"]["name"], **config["model"].get("kwargs", {}))
    method = get_recipe(config.get("method", "dense"))
    method_cfg = method.config_from_dict(config.get("method_config") or {})
    model = method.prepare_model(model, method_cfg, tuple(config["input_shape"]))
    state = load_checkpoint(root / "checkpoint.pt")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{root / 'checkpoint.pt'} does not match the model rebuilt from "
                              f"{root / 'config.json'} ({e})") from e
    return model.to(device).eval(), config


def eval_command(args: argparse.Namespace) -> int:
    from rankwise.cli.train import load_split
    from rankwise.train import evaluate

    root = Path(args.path)
    model, meta = load_run_model(root, args.device)
    spec = dict(meta.get("dataset") or {}) if isinstance(meta.get("dataset"), dict) else {}
    if args.dataset is not None and args.dataset != spec.get("name"):
        spec = {"name": args.dataset, "kwargs": {}}
    if not spec.get("name"):
        raise ConfigError(f"{root} does not record its dataset; pass --dataset, e.g. cifar10")
    if args.dataset == "synthetic" and not spec["kwargs"]:
        shape = meta.get("input_shape") or [3, 32, 32]
        spec["kwargs"] = {"size": args.synthetic_size, "shape": list(shape), "num_classes": 10,
                          "seed": 0}
    data = load_split(spec, args.split == "train", args.data_dir, args.download, args.limit)
    try:
        result = evaluate(model, data, args.batch_size, args.device)
    except RuntimeError as e:  # shape mismatch between the model and the data
        raise ConfigError(f"{root} cannot run on {spec['name']} images of shape "
                          f"{tuple(data.shape)} ({str(e).splitlines()[0]}); pass the --dataset "
                          "the model was trained on") from e
    out = {"path": str(root), "dataset": spec["name"], "split": args.split, "samples": result["n"],
           "loss": result["loss"], "acc": result["acc"],
           "params": sum(p.numel() for p in model.parameters()) or None}  # ONNX: not counted
    if args.json:
        from rankwise.io.atomic import json_text

        print(json_text(out))  # a NaN loss prints as null: valid JSON
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"rankwise eval: {root}")
    for col in ("dataset", "split", "samples", "params", "loss", "acc"):
        table.add_column(col, justify="right")
    params = "–" if out["params"] is None else f"{out['params']:,}"
    table.add_row(out["dataset"], out["split"], str(out["samples"]), params,
                  f"{out['loss']:.4f}", f"{100 * out['acc']:.2f} %")
    Console().print(table)
    return 0


def register(subparsers: Any) -> None:
    from rankwise.cli.train import add_data_arguments

    p = subparsers.add_parser(
        "eval", help="test loss/accuracy of a run or saved model",
        description="Evaluate a `rankwise train` run directory or a rankwise.save directory.")
    p.add_argument("path", help="run directory or saved-model directory")
    p.add_argument("--dataset", default=None, help="default: the dataset the run trained on")
    add_data_arguments(p)
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--limit", type=int, default=None, help="use the first N samples")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=eval_command)
