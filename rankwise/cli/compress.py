"""`rankwise compress RUN`: the survey's pipeline, low-rank → prune → int8 → entropy coding.

Measures the model after every stage on the test split of `--dataset` and writes into `--out`:
`report.md`, `report.json` (stage table + each stage's own report) and the final model as a
reloadable directory (`rankwise.compress.artifact.load_compressed(OUT)`; see
`save_compressed` for the files). OUT is built beside itself and swapped in when complete, so
an earlier output survives a failure; a non-empty OUT that is not a `rankwise compress` output is
refused.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch
from torch import nn

from rankwise.compress.pipeline import PipelineResult, StageRow
from rankwise.errors import ConfigError


def dataset_spec(args: argparse.Namespace, run_config: dict[str, Any]) -> tuple[str, dict]:
    """`(name, load_dataset kwargs)` of the evaluation data: `--dataset`, else the run's
    `config.json["dataset"]` (`rankwise train` writes `{"name", "kwargs", ...}`; a plain name
    is accepted too). The run's kwargs (synthetic size/shape/classes/seed) are kept when the
    names agree."""
    entry = run_config.get("dataset")
    saved_kw: dict[str, Any] = {}
    if isinstance(entry, dict):
        saved_kw = dict(entry.get("kwargs") or {})
        entry = entry.get("name")
    name = args.dataset or entry
    if not name:
        raise ConfigError("no dataset: pass --dataset NAME (mnist, fashion-mnist, cifar10, "
                          "cifar100, synthetic); the run's config.json names none")
    return str(name), saved_kw if name == entry else {}


def load_test_split(args: argparse.Namespace, run_config: dict[str, Any],
                    input_shape: tuple[int, ...] | None, num_classes: int | None) -> Any:
    """The test split, cut to `--limit-test` samples. For `synthetic`, shape/classes default
    to the model's input shape and class count (`--dataset-seed` picks the patterns)."""
    from rankwise.data import load_dataset

    name, kw = dataset_spec(args, run_config)
    if name == "synthetic":
        if input_shape is not None:
            kw.setdefault("shape", tuple(input_shape))
        if num_classes is not None:
            kw.setdefault("num_classes", int(num_classes))
        kw.setdefault("seed", args.dataset_seed)
        if "shape" in kw:
            kw["shape"] = tuple(kw["shape"])
        kw.setdefault("size", args.limit_test or 512)
        ds = load_dataset(name, train=False, **kw)
    else:
        ds = load_dataset(name, train=False, data_dir=args.data_dir)
    if args.limit_test is not None:
        if args.limit_test < 1:
            raise ConfigError(f"--limit-test {args.limit_test}: must be >= 1")
        ds = ds.subset(slice(0, int(args.limit_test)))
    return ds


def _num_classes(model: nn.Module, arch_kwargs: dict[str, Any]) -> int | None:
    if "num_classes" in arch_kwargs:
        return int(arch_kwargs["num_classes"])
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return int(last[-1].out_features) if last else None


def compress_command(args: argparse.Namespace) -> int:
    from rankwise.cli import output_of
    from rankwise.cli.analyze import load_target
    from rankwise.cli.profile import parse_shape
    from rankwise.compress.artifact import save_compressed
    from rankwise.compress.pipeline import PipelineConfig, check_finite, run_pipeline
    from rankwise.io.atomic import (
        atomic_dir,
        atomic_write_json,
        atomic_write_text,
        check_replaceable,
        json_text,
    )
    from rankwise.train import evaluate

    out = check_replaceable(args.out, output_of("compress"))  # refuse before the slow part

    cfg = PipelineConfig(lowrank=args.lowrank, linear_format=None if args.linear_format == "none"
                         else args.linear_format, skip_first_conv=args.skip_first_conv,
                         exclude=tuple(args.exclude), prune=args.prune,
                         prune_scope=args.prune_scope, quantize=args.quantize,
                         entropy_code=args.entropy_code, zstd_level=args.zstd_level)
    loaded = load_target(args.run, args)
    check_finite(loaded.model, str(args.run))  # names the layer, before any data is loaded
    shape = parse_shape(args.input_shape) if args.input_shape else loaded.input_shape
    data = load_test_split(args, loaded.run_config, shape, _num_classes(loaded.model,
                                                                         loaded.arch_kwargs))
    shape = shape or tuple(int(s) for s in data.shape)
    device = torch.device(args.device)

    def measure(model: nn.Module) -> dict[str, float]:
        m = model if device.type == "cpu" else copy.deepcopy(model).to(device)
        return evaluate(m, data, batch_size=args.batch_size, device=device)

    result = run_pipeline(loaded.model, cfg, shape, evaluate=measure, inplace=True)
    # The dataset spec in the form `rankwise train` records, so `rankwise eval OUT` finds it.
    spec = (loaded.run_config or {}).get("dataset")
    if not isinstance(spec, dict) or spec.get("name") != getattr(data, "name", None):
        spec = {"name": getattr(data, "name", None), "kwargs": {}}
    meta = {"command": "compress", "source": str(loaded.path or args.run),
            "dataset": spec, "test_samples": len(data)}
    report = {**meta, "input_shape": list(shape), **result.to_dict()}
    title = f"Compression pipeline: {args.run} on {spec['name']} ({len(data)} test samples)"
    with atomic_dir(out, replace_if=output_of("compress")) as tmp:
        save_compressed(result, tmp, arch=loaded.arch, arch_kwargs=loaded.arch_kwargs,
                        input_shape=shape, meta=meta)
        atomic_write_json(tmp / "report.json", report)  # NaN/Inf → null: valid JSON
        atomic_write_text(tmp / "report.md", stage_markdown(result, title))
    if args.json:
        print(json_text({"stages": report["stages"], "out": str(out)}))
    else:
        from rich.console import Console

        Console(width=max(160, Console().width)).print(stage_table(result, title))
        print(f"saved to {out} (reload: rankwise.compress.artifact.load_compressed)")
    return 0


# ------------------------------------------------------------------------- stage table

HEAD = ("stage", "detail", "acc %", "params", "nonzero", "MACs", "eff. MACs", "fp32 B",
        "int8 B", "coded B", "stored B", "× smaller")


def stage_cells(result: PipelineResult, r: StageRow) -> list[str]:
    """One table row; "× smaller" is relative to the baseline's stored bytes."""
    def n(v: int | None) -> str:
        return "–" if v is None else f"{v:,}"

    base = result.rows[0].bytes_stored
    return [r.stage, r.detail, "–" if r.acc is None else f"{100 * r.acc:.2f}", n(r.params),
            n(r.nonzero_params), n(r.macs), n(r.effective_macs), n(r.bytes_fp32),
            n(r.bytes_int8), n(r.bytes_coded), n(r.bytes_stored),
            f"{base / r.bytes_stored:.2f}" if r.bytes_stored else "–"]


def stage_markdown(result: PipelineResult, title: str = "Compression pipeline") -> str:
    """The stage table as a markdown document (report.md)."""
    lines = [f"# {title}", "",
             "Stages run in order; every row measures the model after that stage. MACs per "
             "sample (eff. = zero weights skipped); bytes: fp32 safetensors, int8 weights + "
             "scales + other tensors, entropy-coded blob (its JSON header included); × smaller "
             "vs the baseline's stored bytes. Quantization is storage-only (float compute on "
             "q·scale).", "",
             "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(stage_cells(result, r)) + " |" for r in result.rows]
    return "\n".join(lines) + "\n"


def stage_table(result: PipelineResult, title: str = "compression pipeline") -> Any:
    """The stage table as a rich Table."""
    from rich.table import Table

    table = Table(title=title)
    for h in HEAD:
        table.add_column(h, justify="left" if h in ("stage", "detail") else "right")
    for r in result.rows:
        table.add_row(*stage_cells(result, r))
    return table


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compress", help="low-rank → prune → int8 → entropy coding, measured per stage",
        description="Chain low-rank decomposition, pruning, int8 quantization and entropy "
                    "coding; measure accuracy, params, MACs and bytes after every stage and "
                    "save a reloadable compressed model.")
    p.add_argument("run", help="run directory, saved model directory, or zoo model name")
    p.add_argument("--lowrank", default=None,
                   help="FORMAT:RANKSPEC, e.g. tucker2:energy:0.9, channel:budget:params=0.5")
    p.add_argument("--linear-format", default="svd", help="linear layers: svd|tt|none (svd)")
    p.add_argument("--skip-first-conv", action="store_true", help="keep the first conv dense")
    p.add_argument("--exclude", action="append", default=[],
                   help="layers kept dense by the low-rank stage (glob/regex, repeatable)")
    p.add_argument("--prune", default=None, help="magnitude:S or filters:S, S in [0, 1]")
    p.add_argument("--prune-scope", default="global", choices=("global", "layer"),
                   help="magnitude pruning over all layers together or per layer (global)")
    p.add_argument("--quantize", default=None, choices=("int8",))
    p.add_argument("--entropy-code", default=None, choices=("zstd", "ans"))
    p.add_argument("--zstd-level", type=int, default=19)
    p.add_argument("--dataset", default=None, help="evaluation dataset (default: the run's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--dataset-seed", type=int, default=0, help="synthetic dataset seed (0)")
    p.add_argument("--limit-test", type=int, default=None, help="evaluate on the first N tests")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--input-shape", default=None, help="C,H,W (default: the model's)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--in-channels", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="init seed for a model name (0)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--json", action="store_true", help="print the stage table as JSON")
    p.set_defaults(func=compress_command)
