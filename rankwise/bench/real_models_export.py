"""The five deployment paths of the real-model matrix: `torch.compile` (no graph breaks,
`fullgraph=True`), `torch.export`, `torch.jit.trace`, ONNX run in ONNX Runtime, `torch.jit.script`;
each cell is "ok" with the max abs deviation from eager (and the output's largest entry, to read
it relative), or the first line of the error. The ONNX cell is what `rankwise export --format onnx`
ships: `io.onnx_file.onnx_bytes` (float32, dynamic batch dimension) run by `OnnxModel`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rankwise.bench.real_models_report import PATHS
from rankwise.io.onnx_file import FirstOutput, OnnxModel, first_tensor, onnx_bytes


def split_args(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(inputs, dict):
        return (), dict(inputs)
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs), {}


def _cell(fn: Callable[[], torch.Tensor], ref: torch.Tensor) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        out = fn()
        err = float((out.float() - ref.float()).abs().max())
        return {"ok": True, "max_abs_err": err, "ref_max_abs": float(ref.float().abs().max()),
                "seconds": time.perf_counter() - start}
    except Exception as e:  # a benchmark cell records any failure instead of stopping the run
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return {"ok": False, "error": f"{type(e).__name__}: {msg}",
                "seconds": time.perf_counter() - start}


def export_paths(model: nn.Module, inputs: Any, compile_backend: str = "inductor",
                 paths: tuple[str, ...] = PATHS) -> dict[str, dict[str, Any]]:
    """Run `model` through the deployment `paths` (default all five); per path "ok" with the
    max abs deviation from eager, or the error."""
    args, kwargs = split_args(inputs)
    with torch.no_grad():
        out = model(*args, **kwargs)
    shipped, example = model, dict(kwargs) or (args[0] if len(args) == 1 else args)
    if kwargs and not isinstance(out, torch.Tensor):  # HF: keyword inputs, ModelOutput
        model, args, kwargs = FirstOutput(model, tuple(kwargs)), tuple(kwargs.values()), {}
    ref = first_tensor(out)

    def compiled() -> torch.Tensor:
        torch._dynamo.reset()
        fn = torch.compile(model, backend=compile_backend, fullgraph=True)
        with torch.no_grad():
            return first_tensor(fn(*args, **kwargs))

    def exported() -> torch.Tensor:
        ep = torch.export.export(model, args, kwargs)
        with torch.no_grad():
            return first_tensor(ep.module()(*args, **kwargs))

    def traced() -> torch.Tensor:
        tr = torch.jit.trace(model, example_inputs=args or None,
                             example_kwarg_inputs=kwargs or None, strict=False)
        with torch.no_grad():
            return first_tensor(tr(*args, **kwargs))

    def onnx() -> torch.Tensor:  # keyword inputs stay keywords, as `rankwise export` passes them
        runner = OnnxModel(onnx_bytes(shipped, example))
        return runner(**example) if isinstance(example, dict) else runner(*args)

    def scripted() -> torch.Tensor:
        sm = torch.jit.script(model)
        with torch.no_grad():
            return first_tensor(sm(*args, **kwargs))

    fns = {"compile": compiled, "export": exported, "trace": traced, "onnx": onnx,
           "script": scripted}
    with torch.no_grad():
        return {name: _cell(fns[name], ref) for name in paths}


__all__ = ["PATHS", "export_paths", "split_args"]
