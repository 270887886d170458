"""Forward latency of a model (`measure_latency`): median and IQR in ms, fp32 or bf16 autocast.

Timing = `torch.utils.benchmark.Timer.blocked_autorange` in eval mode under `torch.no_grad`, after
warm-up (>= `warmup` runs and >= `min_run_time` s); statistics over >= 5 timed blocks where time
allows. `precision="bf16"` runs the forward pass under `torch.autocast(device_type, bfloat16)`
(on CPU too), the weights stay as they are.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from rankwise.analysis.macs import Inputs, call_model
from rankwise.analysis.precision import warn_if_emulated
from rankwise.errors import ConfigError
from rankwise.nested import map_tensors

PRECISIONS = ("fp32", "bf16")
TIMING_FIX = "these are emulated kernels' times: time bf16 on a CPU like the one you deploy to"
RUNTIMES = ("torch", "onnxruntime")  # eager PyTorch, or the ONNX graph in ONNX Runtime


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every sub-module in eval mode; restore each one's own `training` flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def example_input(model: nn.Module, input_shape: Sequence[int], batch: int = 1,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Zeros of shape `(batch, *input_shape)` on the model's device and floating dtype."""
    p = next(iter(model.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    dev = device if device is not None else (p.device if p is not None else "cpu")
    return torch.zeros((batch, *[int(s) for s in input_shape]), dtype=dtype, device=dev)


def rebatch(inputs: Inputs, batch: int, device: torch.device | str | None = None) -> Inputs:
    """`inputs` with every tensor's first row repeated to `batch` rows (dim 0), on `device`."""
    def one(v: torch.Tensor) -> torch.Tensor:
        if not v.dim():
            return v
        v = v[:1].expand(batch, *v.shape[1:]).contiguous()
        return v.to(device) if device is not None else v

    return map_tensors(one, inputs)


def autocast_for(precision: str, device: torch.device | str) -> Any:
    """The autocast context of `precision` ("fp32": none, "bf16": bfloat16 autocast)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r}: choose one of {PRECISIONS}")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def measure_latency(model: nn.Module, input_shape: Sequence[int] | None, batch_size: int,
                    device: torch.device | str = "cpu", min_run_time: float = 0.2,
                    warmup: int = 3, example_inputs: Inputs | None = None,
                    precision: str = "fp32") -> dict[str, float]:
    """Median and IQR (ms) of one forward pass at `batch_size`, eval mode, `no_grad`.

    Inputs: zeros `(batch_size, *input_shape)`, or `example_inputs` re-batched (`rebatch`).
    `blocks` is the number of timed blocks the statistics come from.
    """
    from torch.utils import benchmark

    if example_inputs is not None:
        x: Inputs = rebatch(example_inputs, batch_size, device)
    elif input_shape is not None:
        x = example_input(model, input_shape, batch=batch_size, device=device)
    else:
        raise ConfigError("measure_latency needs input_shape or example_inputs")
    amp = autocast_for(precision, device)
    warn_if_emulated(precision, device, TIMING_FIX)

    def run() -> None:
        with torch.no_grad(), amp:
            call_model(model, x)

    timer = benchmark.Timer(stmt="run()", globals={"run": run},
                            num_threads=torch.get_num_threads())
    with eval_mode(model):
        start, n = time.perf_counter(), 0
        while n < warmup or time.perf_counter() - start < min_run_time:  # warm-up by count+time
            run()
            n += 1
        times: list[float] = []
        for _ in range(4):  # a stalled block can end autorange early: ask for >= 5 blocks
            times += timer.blocked_autorange(min_run_time=min_run_time).times
            if len(times) >= 5:
                break
    t = torch.tensor(times, dtype=torch.float64)
    q1, med, q3 = (float(v) for v in torch.quantile(t, torch.tensor([0.25, 0.5, 0.75],
                                                                     dtype=torch.float64)))
    return {"median_ms": 1e3 * med, "iqr_ms": 1e3 * (q3 - q1), "blocks": float(len(times))}


def onnx_runner(model: nn.Module, input_shape: Sequence[int], example_inputs: Inputs | None = None
                ) -> nn.Module:
    """`model` as a float32 ONNX graph run by ONNX Runtime (`io.onnx_file.OnnxModel`, batch
    dimension dynamic, as many intra-op threads as torch uses): time it like any model. Without
    ONNX Runtime, `ConfigError` with the install hint before anything is exported."""
    from rankwise.io.onnx_file import OnnxModel, onnx_bytes, onnxruntime

    onnxruntime()
    example = example_inputs if example_inputs is not None else example_input(model, input_shape)
    return OnnxModel(onnx_bytes(model, example), torch.get_num_threads())
