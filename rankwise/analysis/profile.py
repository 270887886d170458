"""Params / MACs / latency tables for a model (`profile_model`).

Counting rules (the same as `rankwise.layers.shapes` and `FactorizedLayer.cost`):
- params = `numel` of every parameter (shared parameters counted once);
- MACs = weight multiply-accumulates of `nn.Conv2d` / `nn.Linear` for **one sample**, from the
  shapes seen by forward hooks (bias, norms and activations excluded). A linear applied to a
  `(T, in)` sequence costs `T·in·out`. A factorized layer's MACs are the sum over its conv/linear
  children; a factorized layer without such children (e.g. TT cores used by einsum) is counted
  with its closed form `layer.macs(input_hw)` (times the tokens for linears). A module called
  several times in one forward pass is counted once, at its first call.
- latency = `torch.utils.benchmark.Timer.blocked_autorange` in eval mode under `torch.no_grad`,
  after warm-up (>= 3 runs and >= `min_run_time` s); median and IQR in milliseconds over >= 5
  timed blocks where time allows.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from rankwise.errors import ConfigError
from rankwise.layers.base import FactorizedLayer
from rankwise.layers.shapes import ConvSpec, LinearSpec, conv2d_macs, linear_macs

DENSE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


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


def trace_inputs(model: nn.Module, input_shape: Sequence[int],
                 modules: dict[str, nn.Module]) -> dict[str, tuple[int, ...]]:
    """Shapes of the first positional input each module in `modules` receives, keyed by name.

    Runs one forward pass on zeros of shape `(1, *input_shape)` in eval mode under `no_grad`
    (BatchNorm statistics are not touched). Modules never called are absent from the result.
    Raises `ConfigError` if the forward pass fails (usually a wrong `input_shape`).
    """
    seen: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, mod in modules.items():
        def hook(_m: nn.Module, args: tuple[Any, ...], _name: str = name) -> None:
            if _name not in seen and args and isinstance(args[0], torch.Tensor):
                seen[_name] = tuple(args[0].shape)
        handles.append(mod.register_forward_pre_hook(hook))
    try:
        with eval_mode(model), torch.no_grad():
            model(example_input(model, input_shape))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise ConfigError(
            f"forward pass on zeros of input_shape={tuple(input_shape)} failed: {e}; pass the "
            "input shape the model expects, without the batch dimension (e.g. 3,32,32)"
        ) from e
    finally:
        for h in handles:
            h.remove()
    return seen


def tokens_of(shape: tuple[int, ...]) -> int:
    """Rows a linear sees per sample for an input of `shape` = (1, ..., in_features)."""
    n = 1
    for s in shape[1:-1]:
        n *= int(s)
    return n


def dense_macs(layer: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of a dense conv/linear for one sample with input of `input_shape` (batch first)."""
    if isinstance(layer, nn.Conv2d):
        return conv2d_macs(ConvSpec.from_conv(layer), (input_shape[-2], input_shape[-1]))
    return linear_macs(LinearSpec.from_linear(layer), tokens_of(input_shape))


def factorized_macs(layer: FactorizedLayer, input_shape: tuple[int, ...]) -> int:
    """Closed-form MACs of a factorized layer for one sample with input of `input_shape`."""
    if layer.dense_type is nn.Linear:
        return tokens_of(input_shape) * layer.macs(None)
    return layer.macs((input_shape[-2], input_shape[-1]))


def unique_params(module: nn.Module) -> int:
    """Sum of `numel` over the module's parameters, each shared tensor once."""
    return sum(p.numel() for p in module.parameters())


@dataclass
class ProfileRow:
    """One conv/linear/factorized layer; `other` rows collect params outside such layers."""

    name: str
    type: str
    shape: tuple[int, ...] | None
    format: str | None
    rank: int | tuple[int, ...] | None
    params: int
    macs: int
    params_share: float = 0.0
    macs_share: float = 0.0


@dataclass
class ModelProfile:
    """Per-layer rows, totals (params, MACs/sample), ratios vs a dense baseline, latency (ms)."""

    rows: list[ProfileRow]
    params: int
    macs: int
    input_shape: tuple[int, ...]
    latency: dict[int, dict[str, float]] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data."""
        rows = []
        for r in self.rows:
            d = asdict(r)
            d["shape"] = list(r.shape) if r.shape is not None else None
            d["rank"] = list(r.rank) if isinstance(r.rank, tuple) else r.rank
            rows.append(d)
        return {
            "input_shape": list(self.input_shape),
            "params": self.params,
            "macs": self.macs,
            "latency_ms": {str(b): dict(v) for b, v in self.latency.items()},
            "baseline": None if self.baseline is None else {
                **self.baseline,
                "speedup": {str(b): v for b, v in self.baseline.get("speedup", {}).items()}},
            "rows": rows,
        }

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        table = Table(title=f"profile, input {tuple(self.input_shape)}, MACs per sample")
        for col in ("layer", "type", "shape", "format", "rank", "params", "MACs", "params %",
                    "MACs %"):
            num = col[0] in "pM"
            table.add_column(col, justify="right" if num else "left", no_wrap=num,
                             overflow="fold")
        for r in self.rows:
            fmt = r.format or ("dense" if r.shape is not None else "")
            table.add_row(r.name, r.type, _fmt_shape(r.shape), fmt,
                          "" if r.rank is None else str(r.rank), f"{r.params:,}", f"{r.macs:,}",
                          f"{100 * r.params_share:.1f}", f"{100 * r.macs_share:.1f}")
        table.add_section()
        table.add_row("total", "", "", "", "", f"{self.params:,}", f"{self.macs:,}", "100.0",
                      "100.0")
        lines = []
        if self.baseline:
            b = self.baseline
            lines.append(f"vs dense baseline: params ×{b['params_ratio']:.3f}, "
                         f"MACs ×{b['macs_ratio']:.3f}")
            for bs, s in b.get("speedup", {}).items():
                lines.append(f"  speedup at batch {bs}: {s:.2f}×")
        for bs, v in self.latency.items():
            lines.append(f"latency batch {bs}: median {v['median_ms']:.3f} ms, "
                         f"IQR {v['iqr_ms']:.3f} ms")
        return Group(table, *lines)

    def print(self, console: Any = None) -> None:
        from rich.console import Console

        (console or Console()).print(self)


def _fmt_shape(shape: tuple[int, ...] | None) -> str:
    return "" if shape is None else "×".join(str(s) for s in shape)


def _counted_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Top-level factorized layers and dense conv/linears not inside one, by name."""
    out: dict[str, nn.Module] = {}
    inside: list[str] = []
    for name, mod in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(mod, FactorizedLayer):
            out[name] = mod
            inside.append(name)
        elif isinstance(mod, DENSE_TYPES):
            out[name] = mod
    return out


def count(model: nn.Module, input_shape: Sequence[int]) -> tuple[list[ProfileRow], int, int]:
    """Rows, total params and total MACs (per sample) of `model` on `input_shape`."""
    layers = _counted_layers(model)
    hooked = dict(layers)
    for name, mod in layers.items():
        if isinstance(mod, FactorizedLayer):
            for sub_name, sub in mod.named_modules():
                if sub_name and isinstance(sub, DENSE_TYPES):
                    hooked[f"{name}.{sub_name}"] = sub
    shapes = trace_inputs(model, input_shape, hooked)
    rows: list[ProfileRow] = []
    counted_params = 0
    for name, mod in layers.items():
        in_shape = shapes.get(name)
        if isinstance(mod, FactorizedLayer):
            subs = [n for n in hooked if n.startswith(name + ".")]
            if subs:
                macs = sum(dense_macs(hooked[n], shapes[n]) for n in subs if n in shapes)
            else:
                macs = factorized_macs(mod, in_shape) if in_shape is not None else 0
            w_shape = _spec_shape(mod)
            fmt, rank, typ = mod.format, mod.rank, type(mod).__name__
        else:
            macs = dense_macs(mod, in_shape) if in_shape is not None else 0
            w_shape, fmt, rank, typ = tuple(mod.weight.shape), None, None, type(mod).__name__
        params = unique_params(mod)
        counted_params += params
        rows.append(ProfileRow(name, typ, w_shape, fmt, rank, params, macs))
    total_params = unique_params(model)
    other = total_params - counted_params
    if other > 0:
        covered = {id(m) for x in layers.values() for m in x.modules()}
        kinds = sorted({type(m).__name__ for m in model.modules()
                        if id(m) not in covered and any(True for _ in m.parameters(recurse=False))})
        rows.append(ProfileRow("(other)", ", ".join(kinds), None, None, None, other, 0))
    total_macs = sum(r.macs for r in rows)
    for r in rows:
        r.params_share = r.params / total_params if total_params else 0.0
        r.macs_share = r.macs / total_macs if total_macs else 0.0
    return rows, total_params, total_macs


def _spec_shape(layer: FactorizedLayer) -> tuple[int, ...]:
    s = layer.dense_spec
    if isinstance(s, LinearSpec):
        return (s.out_features, s.in_features)
    return (s.out_channels, s.in_channels // s.groups, *s.kernel_size)


def measure_latency(model: nn.Module, input_shape: Sequence[int], batch_size: int,
                    device: torch.device | str = "cpu", min_run_time: float = 0.2,
                    warmup: int = 3) -> dict[str, float]:
    """Median and IQR (ms) of one forward pass at `batch_size`, eval mode, `no_grad`.

    `blocks` is the number of timed blocks the statistics come from.
    """
    from torch.utils import benchmark

    x = example_input(model, input_shape, batch=batch_size, device=device)

    def run() -> None:
        with torch.no_grad():
            model(x)

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


def profile_model(model: nn.Module, input_shape: Sequence[int],
                  baseline: nn.Module | ModelProfile | None = None, latency: bool = True,
                  batch_sizes: Sequence[int] = (1, 8), device: torch.device | str = "cpu",
                  min_run_time: float = 0.2) -> ModelProfile:
    """Profile `model` on inputs of shape `(B, *input_shape)`.

    `baseline` (a dense model or its profile) adds `params_ratio`, `macs_ratio` and, when both
    have latency, `speedup` per batch size (= baseline median / model median). The model is
    moved to `device` on a copy when it lives elsewhere; the caller's model is not modified.
    """
    if not input_shape:
        raise ConfigError("profile_model needs input_shape without the batch dim, e.g. (3, 32, 32)")
    input_shape = tuple(int(s) for s in input_shape)
    dev = torch.device(device)
    p = next(iter(model.parameters()), None)
    if p is not None and p.device != dev:
        model = copy.deepcopy(model).to(dev)
    rows, params, macs = count(model, input_shape)
    prof = ModelProfile(rows, params, macs, input_shape)
    if latency:
        for bs in batch_sizes:
            prof.latency[int(bs)] = measure_latency(model, input_shape, int(bs), dev, min_run_time)
    if baseline is not None:
        if isinstance(baseline, nn.Module):
            baseline = profile_model(baseline, input_shape, latency=latency,
                                     batch_sizes=batch_sizes, device=device,
                                     min_run_time=min_run_time)
        prof.baseline = {
            "params": baseline.params,
            "macs": baseline.macs,
            "params_ratio": params / baseline.params if baseline.params else float("nan"),
            "macs_ratio": macs / baseline.macs if baseline.macs else float("nan"),
            "speedup": {bs: baseline.latency[bs]["median_ms"] / v["median_ms"]
                        for bs, v in prof.latency.items() if bs in baseline.latency},
        }
    return prof
