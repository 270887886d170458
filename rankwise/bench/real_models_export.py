"""The five deployment paths of the real-model matrix: `torch.compile` (no graph breaks,
`fullgraph=True`), `torch.export`, `torch.jit.trace`, ONNX (dynamo exporter) run in
onnxruntime, `torch.jit.script`; each cell is "ok" with the max abs deviation from eager (and
the output's largest entry, to read it relative), or the first line of the error."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankwise.bench.real_models_report import PATHS


def first_out(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, dict):
        return next(v for v in out.values() if isinstance(v, torch.Tensor))
    return out[0]


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


class TensorOut(nn.Module):
    """`model(**dict(zip(keys, tensors)))` reduced to its first tensor (HF `logits`): the
    exporters take positional tensors in and a tensor out."""

    def __init__(self, model: nn.Module, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return first_out(self.model(**dict(zip(self.keys, tensors, strict=True))))


def export_paths(model: nn.Module, inputs: Any, compile_backend: str = "inductor",
                 workdir: Path | None = None,
                 paths: tuple[str, ...] = PATHS) -> dict[str, dict[str, Any]]:
    """Run `model` through the deployment `paths` (default all five); per path "ok" with the
    max abs deviation from eager, or the error."""
    args, kwargs = split_args(inputs)
    with torch.no_grad():
        out = model(*args, **kwargs)
    if kwargs and not isinstance(out, torch.Tensor):  # HF: keyword inputs, ModelOutput
        model, args, kwargs = TensorOut(model, tuple(kwargs)), tuple(kwargs.values()), {}
    ref = first_out(out)

    def compiled() -> torch.Tensor:
        torch._dynamo.reset()
        fn = torch.compile(model, backend=compile_backend, fullgraph=True)
        with torch.no_grad():
            return first_out(fn(*args, **kwargs))

    def exported() -> torch.Tensor:
        ep = torch.export.export(model, args, kwargs)
        with torch.no_grad():
            return first_out(ep.module()(*args, **kwargs))

    def traced() -> torch.Tensor:
        tr = torch.jit.trace(model, example_inputs=args or None,
                             example_kwarg_inputs=kwargs or None, strict=False)
        with torch.no_grad():
            return first_out(tr(*args, **kwargs))

    def onnx() -> torch.Tensor:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(dir=workdir) as tmp:  # model.onnx + its .data file
            path = Path(tmp) / "model.onnx"
            torch.onnx.export(model, args, str(path), kwargs=kwargs or None, dynamo=True,
                              verbose=False)
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            flat = [*args, *kwargs.values()]
            feed = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), flat, strict=False)}
            out = sess.run(None, feed)[0]
        return torch.from_numpy(out)

    def scripted() -> torch.Tensor:
        sm = torch.jit.script(model)
        with torch.no_grad():
            return first_out(sm(*args, **kwargs))

    fns = {"compile": compiled, "export": exported, "trace": traced, "onnx": onnx,
           "script": scripted}
    with torch.no_grad():
        return {name: _cell(fns[name], ref) for name in paths}


__all__ = ["PATHS", "TensorOut", "export_paths", "first_out", "split_args"]
