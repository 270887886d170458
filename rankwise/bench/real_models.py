"""Real-model matrix: torchvision / timm / Hugging Face models, factorized by rankwise and by
tensorly-torch at the same parameter budget, profiled and pushed through five deployment paths.

Run: `python -m rankwise.bench.real_models --out results/real_models` (one JSON per model;
`--models resnet50,gpt2` picks rows, `--quick` skips inductor and the bf16 timings).
`section(results_root)` renders the committed JSON as the BENCHMARKS.md section.

Per model of `MODELS` (real sizes, random weights, built from config by `build_model`; the HF
configs are written locally from `HF_CONFIGS`, nothing is downloaded):
- dense: params, MACs per sample (`rankwise.analysis.profile`; fvcore's count beside it),
  latency at batch 1 in fp32 and under bf16 autocast (median ms, `measure_latency`);
- rankwise: `decompose(format=conv format, linear_format=..., rank="ratio:R")`;
- tltorch: every layer rankwise factorized is replaced by `tltorch.FactorizedConv.from_conv`
  (Tucker, implementation "factorized") / `FactorizedLinear.from_linear` (Tucker,
  "reconstructed") at the same parameter ratio; grouped convs stay dense (listed);
- each factorized model: params ×, MACs ×, fp32 / bf16 latency × (dense ÷ factorized, > 1 is
  faster) and the export paths: `torch.compile` (inductor, `fullgraph=True`), `torch.export`,
  `torch.jit.trace`, ONNX (dynamo exporter) run in onnxruntime, `torch.jit.script`; each cell
  is "ok" with the max abs deviation from eager (and eager's max abs output), or the first
  line of the error.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankwise.analysis.latency import measure_latency
from rankwise.analysis.macs import call_model
from rankwise.analysis.profile import count
from rankwise.bench.real_models_export import export_paths, split_args
from rankwise.bench.real_models_report import section
from rankwise.io.atomic import atomic_write
from rankwise.io.onnx_file import FirstOutput, first_tensor
from rankwise.layers.base import FactorizedLayer
from rankwise.models.resolve import build_model, example_inputs, random_inputs

# HF configs saved as local folders by `main()` (no download): `transformers.<class>(**kw)`
HF_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "bert-base": ("BertConfig", {"architectures": ["BertModel"]}),
    "gpt2": ("GPT2Config", {"use_cache": False, "architectures": ["GPT2LMHeadModel"]}),
}
_IMAGE = (3, 224, 224)


def _row(spec: str, kind: str, shape: tuple[int, ...] = _IMAGE, conv: str | None = "tucker2",
         label: str | None = None) -> dict[str, Any]:
    return {"spec": spec, "kwargs": {}, "shape": shape, "conv": conv, "linear": "svd",
            "kind": kind, **({"label": label} if label else {})}


MODELS: dict[str, dict[str, Any]] = {
    "resnet50": _row("tv:resnet50", "conv net"),
    "mobilenet_v3_small": _row("tv:mobilenet_v3_small", "conv net"),
    "efficientnet_b0": _row("tv:efficientnet_b0", "conv net"),
    "convnext_tiny": _row("tv:convnext_tiny", "conv net"),
    "vit_b_16": _row("tv:vit_b_16", "transformer", conv=None),
    "swin_t": _row("tv:swin_t", "transformer", conv=None),
    "tf_efficientnet_b0": _row("timm:tf_efficientnet_b0", "conv net"),
    "regnetx_002": _row("timm:regnetx_002", "conv net"),
    "deit_tiny": _row("timm:deit_tiny_patch16_224", "transformer", conv=None),
    "bert_base": _row("hf:{hf_dir}/bert-base", "transformer", (128,), None,
                      "hf: BertModel(BertConfig()) (bert-base-uncased), seq 128"),
    "gpt2": _row("hf:{hf_dir}/gpt2", "transformer", (128,), None,
                 "hf: GPT2LMHeadModel(GPT2Config()) (gpt2, 124M), seq 128"),
}


# ----- optional compat step, run by `main()` only (never on import of rankwise) -------------
def torchvision_cpu_shim() -> None:
    """COMPAT (bench script only): a CUDA build of torchvision 0.28 cannot import next to the
    CPU torch (`register_fake("torchvision::nms")` finds no op). Declaring the `nms` / `qnms`
    schemas first lets the model code load; detection ops stay unusable."""
    try:
        torch.ops.torchvision.nms  # noqa: B018 - lookup is the check
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    torchvision_cpu_shim.keep = lib  # type: ignore[attr-defined]  # keep the ops registered


def fvcore_macs(model: nn.Module, inputs: Any) -> dict[str, Any] | None:
    """fvcore's total and per-operator counts (its "flops" are MACs), or None if unavailable."""
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        return None
    args, kwargs = split_args(inputs)
    if kwargs:  # fvcore traces positional tensors in, tensors out
        model, args = FirstOutput(model, tuple(kwargs)), tuple(kwargs.values())
    try:
        fa = FlopCountAnalysis(model, args)
        fa.unsupported_ops_warnings(False)
        fa.uncalled_modules_warnings(False)
        return {"total": int(fa.total()), "by_operator": {k: int(v) for k, v in
                                                          fa.by_operator().items()}}
    except Exception as e:  # fvcore's JIT tracing fails on some HF models: record why
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}


def measure(model: nn.Module, inputs: Any, precisions: tuple[str, ...],
            min_run_time: float) -> dict[str, Any]:
    """Params, MACs per sample and batch-1 latency (median ms) per precision."""
    _, params, macs = count(model, example_inputs=inputs)
    lat = {p: measure_latency(model, None, 1, "cpu", min_run_time, example_inputs=inputs,
                              precision=p)["median_ms"] for p in precisions}
    return {"params": params, "macs": macs, "latency_ms": lat}


def tltorch_like(dense: nn.Module, factorized: nn.Module) -> tuple[nn.Module, list[str]]:
    """`factorized` with each rankwise layer replaced by tltorch's factorized layer at the same
    parameter ratio (Tucker convs, Tucker linears), built from the dense layer of the same name
    (or, inside modules rankwise converted such as `nn.MultiheadAttention`, from `to_dense()`),
    and the names of the layers left dense: grouped convs (`FactorizedConv` has no `groups`)."""
    import tltorch

    out, kept = copy.deepcopy(factorized), []
    layers = [(n, m) for n, m in factorized.named_modules() if isinstance(m, FactorizedLayer)]
    for name, layer in layers:
        try:
            old = copy.deepcopy(dense.get_submodule(name))
        except AttributeError:
            old = layer.to_dense()
        if type(old).__name__ == "Conv1D" and hasattr(old, "nf"):  # HF GPT-2: y = x W + b
            lin = nn.Linear(old.weight.shape[0], old.weight.shape[1])
            with torch.no_grad():
                lin.weight.copy_(old.weight.T)
                lin.bias.copy_(old.bias)
            old = lin
        if not isinstance(old, (nn.Conv2d, nn.Linear)) or (
                isinstance(old, nn.Conv2d) and old.groups != 1):
            kept.append(name)
            new = layer.to_dense()
        elif isinstance(old, nn.Conv2d):
            ratio = layer.params() / sum(p.numel() for p in old.parameters())
            new = tltorch.FactorizedConv.from_conv(old, rank=ratio, factorization="tucker",
                                                   implementation="factorized")
        else:
            # "reconstructed": tltorch's factorized Tucker linear contracts input, core and
            # factors in one einsum whose intermediate needs GBs for a ViT block (measured)
            ratio = layer.params() / sum(p.numel() for p in old.parameters())
            new = tltorch.FactorizedLinear.from_linear(old, rank=ratio, factorization="tucker",
                                                       implementation="reconstructed")
        parent, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, child, new)
    return out.eval(), kept


def _init_zero_heads(model: nn.Module, seed: int = 0) -> nn.Module:
    """Draw N(0, 0.02²) weights for linear layers initialised to zero (torchvision ViT's head):
    a zero output would hide every export and factorization deviation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear) and not m.weight.any():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.02)
    return model


def dense_model(entry: dict[str, Any], hf_dir: Path) -> tuple[nn.Module, Any]:
    """The random-weight dense model of a `MODELS` entry (seed 0, eval mode) and its batch-1
    random inputs (token ids for the HF rows)."""
    spec = entry["spec"].format(hf_dir=hf_dir)
    dense = _init_zero_heads(build_model(spec, seed=0, **entry["kwargs"]).eval())
    return dense, random_inputs(example_inputs(dense, entry["shape"]), dense, seed=0)


def run_model(key: str, entry: dict[str, Any], ratio: float, quick: bool, hf_dir: Path
              ) -> dict[str, Any]:
    """One model's JSON record (see the module docstring)."""
    from rankwise.surgery.decompose import decompose

    dense, inputs = dense_model(entry, hf_dir)
    precisions = ("fp32",) if quick else ("fp32", "bf16")
    min_run = 0.05 if quick else 0.5
    rec: dict[str, Any] = {"model": key, "spec": entry.get("label", entry["spec"]),
                           "kind": entry["kind"],
                           "input_shape": list(entry["shape"]), "rank": f"ratio:{ratio}",
                           "dense": measure(dense, inputs, precisions, min_run),
                           "fvcore": fvcore_macs(dense, inputs), "variants": {}}
    args, kwargs = split_args(inputs)
    fact, report = decompose(dense, format=entry["conv"], linear_format=entry["linear"],
                             rank=f"ratio:{ratio}", example_inputs=(args, kwargs),
                             skip_first_conv=True)
    fact.eval()
    variants, kept = {"rankwise": fact}, {"rankwise": [], "tltorch": []}
    try:
        variants["tltorch"], kept["tltorch"] = tltorch_like(dense, fact)
    except Exception as e:  # record tensorly-torch failures rather than abort the matrix
        rec["variants"]["tltorch"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    backend = "eager" if quick else "inductor"
    for name, model in variants.items():
        try:
            rec["variants"][name] = _variant(name, model, dense, inputs, precisions, min_run,
                                             backend)
        except Exception as e:  # e.g. a tltorch layer failing in forward: keep the other row
            rec["variants"][name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            continue
        rec["variants"][name]["kept_dense"] = kept[name]
    return rec


def _variant(name: str, model: nn.Module, dense: nn.Module, inputs: Any,
             precisions: tuple[str, ...], min_run: float, backend: str) -> dict[str, Any]:
    """One factorized variant's record: formats, measurements, deviation, export cells."""
    formats = sorted({type(m).__name__ if name == "tltorch" else m.format
                      for m in model.modules()
                      if isinstance(m, FactorizedLayer) or type(m).__module__.startswith(
                          "tltorch")} - {"FactorizedTensor"})
    with torch.no_grad():
        deviation = float((first_tensor(call_model(model, inputs))
                           - first_tensor(call_model(dense, inputs))).abs().max())
    return {
        "formats": formats,
        **measure(model, inputs, precisions, min_run),
        "output_deviation_from_dense": deviation,
        "compile_backend": backend,
        "export": export_paths(model, inputs, backend),
    }


def _latency_record(key: str, ratio: float, hf_dir: Path) -> dict[str, Any]:
    from rankwise.bench.real_models_latency import latency_cells

    entry = MODELS[key]
    dense, inputs = dense_model(entry, hf_dir)
    return {"model": key, "spec": entry.get("label", entry["spec"]), "ratio": ratio,
            "batch": 1, "threads": 1, "cells": latency_cells(dense, inputs, entry, ratio)}


def _environment() -> dict[str, Any]:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine()}


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rankwise.bench.real_models",
                                description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/real_models", help="folder for the JSON results")
    p.add_argument("--models", default=",".join(MODELS), help=f"subset of {list(MODELS)}")
    p.add_argument("--ratio", type=float, default=0.25, help="rank ratio (default 0.25)")
    p.add_argument("--quick", action="store_true", help="fp32 only, eager compile backend")
    p.add_argument("--latency-budget", type=float, default=None, metavar="R",
                   help="instead of the matrix: latency budget R against MACs budget R per "
                        "model, fp32 and bf16 (JSON under OUT/latency; real_models_latency)")
    p.add_argument("--overwrite", action="store_true",
                   help="measure models whose JSON already exists again (default: skip them)")
    args = p.parse_args(argv)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        p.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    torchvision_cpu_shim()  # COMPAT: see the function; only this script runs it
    import transformers

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():  # restored on return
        work = Path(tmp)
        for folder, (cls, kw) in HF_CONFIGS.items():
            getattr(transformers, cls)(**kw).save_pretrained(work / folder)
        for key in keys:
            dest = (out if args.latency_budget is None else out / "latency") / f"{key}.json"
            if dest.exists() and not args.overwrite:
                print(f"{key}: {dest} exists, kept (pass --overwrite to measure it again)",
                      flush=True)
                continue
            start = time.perf_counter()
            try:
                rec = run_model(key, MODELS[key], args.ratio, args.quick, work) \
                    if args.latency_budget is None else _latency_record(key, args.latency_budget,
                                                                         work)
            except Exception as e:  # one model's failure must not lose the others' results
                print(f"{key}: failed: {type(e).__name__}: {e}", flush=True)
                continue
            rec["environment"] = _environment()
            rec["seconds"] = time.perf_counter() - start
            rec.update(seed=0, date=time.strftime("%Y-%m-%d", time.gmtime()), commit=_commit(),
                       command="python -m rankwise.bench.real_models " + " ".join(
                           argv if argv is not None else sys.argv[1:]))
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(dest, json.dumps(rec, indent=2, sort_keys=True).encode())
            print(f"{key}: {rec['seconds']:.0f} s -> {dest}", flush=True)
    return 0


__all__ = ["MODELS", "main", "run_model", "section"]

if __name__ == "__main__":
    raise SystemExit(main())
