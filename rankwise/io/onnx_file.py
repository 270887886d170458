"""The ONNX deployment copy: a float32 graph run by ONNX Runtime on CPU.

`export_onnx(model, path, example)` traces `model` in eval mode with torch's ONNX exporter
(`torch.onnx.export(..., dynamo=True)`), the batch dimension of every input left dynamic, and
writes one self-contained `.onnx` file atomically (a model of more than 2 GiB of float32 weights
keeps them in `<file>.data` beside it). ONNX Runtime folds BatchNorm into the convs
itself when it loads the graph. `OnnxModel(path)` runs such a file behind the `nn.Module`
interface, so evaluation and timing code take it like any model.

Why it matters for low-rank models, measured on CIFAR-10 ResNet-20 at batch 1 on one AVX-512
core: dense runs in 0.43 ms under ONNX Runtime against 1.43 ms in eager torch fp32 and 1.00 ms in
eager bf16. The factorized models keep their speed-up there: TRP+Nu VH at 10× FLOPs is 2.2×
faster than dense, while eager bf16 makes it slower than dense. Eager torch pays a fixed cost
per op, and at CIFAR size that cost is a large share of a small conv.

Needs the `export` extra (`pip install 'rankwise[export]'`: onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankwise.errors import ConfigError
from rankwise.io.atomic import atomic_write

INSTALL_HINT = "pip install 'rankwise[export]' (onnx, onnxruntime, onnxscript)"
PROTO_LIMIT = 2**31 - 2**26  # float32 weight bytes one serialized graph holds, with a margin


def onnxruntime() -> Any:
    """The `onnxruntime` module, or `ConfigError` saying how to install it."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ConfigError(f"ONNX Runtime is not installed ({e}); {INSTALL_HINT}") from e
    return ort


def _inputs(example: torch.Tensor | Mapping[str, torch.Tensor] | tuple[torch.Tensor, ...]
            ) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor], list[str]]:
    """`(args, kwargs, input names)` of an example: one tensor ("input"), a tuple of tensors
    ("input", "input_1", ...) or keyword tensors (their names)."""
    if isinstance(example, torch.Tensor):
        return (example,), {}, ["input"]
    if isinstance(example, Mapping):
        return (), dict(example), list(example)
    args = tuple(example)
    return args, {}, ["input" if i == 0 else f"input_{i}" for i in range(len(args))]


def _trace_input(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy of `t`, floating tensors in float32 (the graph's dtype), with at least two
    rows: `torch.export` specializes a dimension whose example size is 1 (its "0/1
    specialization"), so a batch-1 example cannot leave the batch dynamic; on ConvNeXt it fails
    outright ("Invalid ranges [2:1]"). A single row is repeated."""
    t = (t.float() if t.is_floating_point() else t).cpu()
    return t.expand(2, *t.shape[1:]).contiguous() if t.dim() and t.shape[0] == 1 else t


def first_tensor(out: Any) -> torch.Tensor:
    """The first tensor of a model's output: itself, `.logits` (Hugging Face), the first tensor
    value of a dict, or element 0 of a tuple / list."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, Mapping):
        return next(v for v in out.values() if isinstance(v, torch.Tensor))
    return out[0]


class FirstOutput(nn.Module):
    """`model` called with the graph's input tensors, positionally or as the keywords `keys`,
    returning `first_tensor` of its output: the one output `OnnxModel` returns, and no cache
    object (Hugging Face's `DynamicCache`, which the exporter cannot flatten) in the graph."""

    def __init__(self, model: nn.Module, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        if self.keys:
            return first_tensor(self.model(**dict(zip(self.keys, tensors, strict=True))))
        return first_tensor(self.model(*tensors))


def _cause(e: Exception) -> str:
    """The line that says why an export failed: the exporter's "Exception summary" when it
    gives one (its first line is only a generic 'Failed to export'), else the first line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith("## Exception summary") and i + 1 < len(lines):
            return lines[i + 1]
    return lines[0] if lines else type(e).__name__


def weight_bytes(model: nn.Module) -> int:
    """Bytes of `model`'s parameters and buffers in float32 (what the graph stores)."""
    return sum(4 * t.numel() for t in (*model.parameters(), *model.buffers()))


def onnx_program(model: nn.Module, example: Any, opset: int | None = None) -> Any:
    """The `torch.onnx.ONNXProgram` of `model` (a float32 eval-mode CPU copy) traced on `example`,
    with a dynamic batch dimension (dim 0) on every input tensor and one output, the model's
    first tensor (`first_tensor`: Hugging Face models give their logits)."""
    try:
        import onnxscript  # noqa: F401 - the exporter's graph builder
    except ImportError as e:
        raise ConfigError(f"ONNX export needs onnxscript ({e}); {INSTALL_HINT}") from e
    args, kwargs, names = _inputs(example)
    if any(not isinstance(t, torch.Tensor) for t in (*args, *kwargs.values())):
        raise ConfigError("ONNX export: every model input must be a tensor")
    graph = FirstOutput(copy.deepcopy(model).float().cpu().eval(), tuple(kwargs)).eval()
    tensors = tuple(_trace_input(t) for t in (*args, *kwargs.values()))
    batch = torch.export.Dim("batch", min=1)
    shapes = (tuple({0: batch} for _ in tensors),)  # the one *tensors parameter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the exporter's own deprecations
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return torch.onnx.export(graph, tensors, dynamo=True, dynamic_shapes=shapes,
                                     input_names=names, opset_version=opset, verbose=False)
        except Exception as e:  # the exporter raises many types; name the model and the cause
            raise ConfigError(f"ONNX export of {type(model).__name__} failed: {_cause(e)}") \
                from e


def onnx_bytes(model: nn.Module, example: Any, opset: int | None = None) -> bytes:
    """The serialized ONNX graph of `model` (`onnx_program`), weights inside: models whose
    float32 weights reach `PROTO_LIMIT` are refused (write them with `export_onnx`)."""
    size = weight_bytes(model)
    if size >= PROTO_LIMIT:
        raise ConfigError(f"ONNX export: {type(model).__name__} holds {size / 2**30:.1f} GiB of "
                          "float32 tensors, more than one serialized ONNX graph holds (2 GiB); "
                          "write it to a file with export_onnx (CLI: rankwise export --format "
                          "onnx), which keeps the weights in a .data file beside the graph")
    return onnx_program(model, example, opset).model_proto.SerializeToString()


def export_onnx(model: nn.Module, path: str | os.PathLike[str], example: Any,
                opset: int | None = None) -> Path:
    """Write `model` as an ONNX graph at `path`; `example`: a tensor `(B, ...)`, a tuple of
    tensors or keyword tensors. Below `PROTO_LIMIT` of float32 weights, one file (a temporary
    file renamed into place). Above it, the weights go to `<path>.data` (ONNX external data,
    which ONNX Runtime reads from beside the graph): both are written in a temporary folder
    next to `path` and renamed into place, the weights first."""
    path = Path(path)
    program = onnx_program(model, example, opset)
    if weight_bytes(model) < PROTO_LIMIT:
        atomic_write(path, program.model_proto.SerializeToString())
        return path
    data = path.with_name(path.name + ".data")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        program.save(str(Path(tmp) / path.name), external_data=True)
        os.replace(Path(tmp) / data.name, data)
        os.replace(Path(tmp) / path.name, path)
    return path


class OnnxModel(nn.Module):
    """An ONNX graph (file path or bytes) run by ONNX Runtime's CPU provider with `threads`
    intra-op threads (default: torch's thread count). `forward` takes the exported inputs in
    order (or by name) as tensors and returns the first output as a float tensor."""

    def __init__(self, source: str | os.PathLike[str] | bytes, threads: int | None = None
                 ) -> None:
        super().__init__()
        ort = onnxruntime()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        model = source if isinstance(source, bytes) else str(source)
        try:
            self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNX Runtime's own exception types
            where = "the given bytes" if isinstance(source, bytes) else str(source)
            raise ConfigError(f"{where}: ONNX Runtime cannot load it ({e}); export it again "
                              "with `rankwise export --format onnx`") from e
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        feed = dict(zip(self.input_names, args, strict=False))
        feed.update(kwargs)
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise ConfigError(f"OnnxModel: inputs {missing} not given (the graph takes "
                              f"{self.input_names})")
        arrays = {k: v.detach().cpu().numpy() for k, v in feed.items()}
        return torch.from_numpy(self.session.run(None, arrays)[0])


__all__ = ["INSTALL_HINT", "PROTO_LIMIT", "FirstOutput", "OnnxModel", "export_onnx", "first_tensor",
           "onnx_bytes", "onnx_program", "onnxruntime", "weight_bytes"]
