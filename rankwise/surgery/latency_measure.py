"""Filling a `LatencyTable`: candidate rank grids, an interleaved timer, per-layer measurement.

Every distinct layer (conv arguments + input size, or linear features + rows per sample) is
timed once per table: the dense layer and each candidate `(format, rank)` on the same random
input, in interleaved rounds (dense, c1, c2, …, then reversed), median per option, so
background load hits all options alike. Candidate layers are built with `from_spec` (fresh
weights: latency does not depend on the values).

Rank grid (`candidate_ranks`): the ranks whose MACs are a fraction `f ∈ MAC_FRACTIONS` of the
dense layer's, rounded down to a multiple of `align` (16 = one AVX-512 fp32 vector, 32 for bf16
by default), so every rank the allocator can pick is one the kernels handle without a ragged
tail; Tucker-2 keeps `r_in / r_out ≈ c / n`.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from rankwise.analysis.latency import onnx_runner, rebatch
from rankwise.analysis.macs import Inputs, call_model
from rankwise.errors import ConfigError
from rankwise.io.export_precision import (
    precision_context,
    prepare_input,
    prepare_inputs,
    prepare_module,
    to_deploy,
)
from rankwise.layers import FORMATS
from rankwise.layers.shapes import LinearSpec, Pair, conv2d_macs, linear_macs
from rankwise.surgery.latency_table import DENSE, LatencyTable, LayerSpec, Option, layer_key

MAC_FRACTIONS = (0.08, 0.15, 0.22, 0.3, 0.4, 0.5, 0.62, 0.75)
CONV_FORMATS = ("channel", "spatial", "tucker2")
LINEAR_FORMAT = "svd"  # what a linear may become: `LowRankLinear`, two linears through rank r


def default_align(precision: str) -> int:
    """Rank multiple the kernels like: 16 fp32 lanes or 32 bf16 lanes of a 512-bit vector.

    Measured (oneDNN, AVX-512 + AVX512-BF16, batch 8, channel format on 1×1 1024→256 and 3×3
    256→256 convs at 14²): time steps up just past multiples of 16 in both precisions (bf16 3×3:
    rank 48 0.91 ms, 52 1.35 ms, 63 1.41 ms, 64 1.16 ms); 32 in bf16 is the conservative choice.
    """
    return 32 if precision == "bf16" else 16


def _rank_at(fmt: str, spec: LayerSpec, k: int, limit: tuple[int, ...]) -> tuple[int, ...]:
    if len(limit) == 1:
        return (min(k, limit[0]),)
    r_in = max(1, min(limit[1], round(k * spec.in_channels / spec.out_channels)))
    return (min(k, limit[0]), r_in)


def _dense_macs(spec: LayerSpec, input_hw: Pair) -> int:
    """MACs per sample of the dense layer (a linear's per row: the ratios are what count)."""
    return linear_macs(spec) if isinstance(spec, LinearSpec) else conv2d_macs(spec, input_hw)


def candidate_ranks(fmt: str, spec: LayerSpec, input_hw: Pair, align: int,
                    fractions: Sequence[float] = MAC_FRACTIONS) -> list[tuple[int, ...]]:
    """Distinct ranks of `fmt` at ≈ `fractions` of the dense MACs, each a multiple of `align`.

    A rank is rounded down to a multiple of `align` (or of `align / 2`, … down to 1 when the
    layer is narrower than `align`); ranks whose MACs reach the dense MACs are left out.
    Returns rank tuples (1 entry; 2 for tucker2 `(r_out, r_in)`), ascending.
    """
    if align < 1:
        raise ConfigError(f"align={align} must be >= 1")
    cls = FORMATS[fmt]
    limit = tuple(int(m) for m in cls.max_rank(spec))
    dense = _dense_macs(spec, input_hw)
    step = align
    while step > 1 and step > limit[0] // 4:
        step //= 2
    out: list[tuple[int, ...]] = []
    for f in fractions:
        lo, hi = 1, limit[0]
        while lo < hi:  # largest k whose MACs ≤ f · dense
            mid = (lo + hi + 1) // 2
            ok = cls.cost(spec, _to_rank(_rank_at(fmt, spec, mid, limit)), input_hw)[1] <= f * dense
            lo, hi = (mid, hi) if ok else (lo, mid - 1)
        k = (lo // step) * step
        if k < 1:
            continue
        r = _rank_at(fmt, spec, k, limit)
        if len(r) == 2 and r[1] % step and r[1] > step:
            r = (r[0], (r[1] // step) * step)
        if cls.cost(spec, _to_rank(r), input_hw)[1] < dense and r not in out:
            out.append(r)
    return sorted(out)


def _to_rank(r: tuple[int, ...]) -> int | tuple[int, ...]:
    return r[0] if len(r) == 1 else r


def layer_options(spec: LayerSpec, input_hw: Pair, formats: Sequence[str], align: int,
                  fractions: Sequence[float] = MAC_FRACTIONS) -> list[Option]:
    """`[DENSE, (fmt, rank), …]`: what the allocator may pick for this layer.

    `formats` are the conv formats; 1×1 convs are matrices: only "channel" applies (as in
    `decompose`); a linear may become `LINEAR_FORMAT` whatever `formats` says.
    """
    if isinstance(spec, LinearSpec):
        ranks = candidate_ranks(LINEAR_FORMAT, spec, input_hw, align, fractions)
        return [DENSE, *((LINEAR_FORMAT, r) for r in ranks)]
    if spec.kernel_size == (1, 1):
        formats = [f for f in formats if f == "channel"] or []
    out: list[Option] = [DENSE]
    for fmt in formats:
        if fmt not in CONV_FORMATS:
            raise ConfigError(f"format {fmt!r} has no latency model; choose from {CONV_FORMATS}")
        out += [(fmt, r) for r in candidate_ranks(fmt, spec, input_hw, align, fractions)]
    return out


def build_option(spec: LayerSpec, option: Option) -> nn.Module:
    """A fresh module for `option` (the dense layer or a factorized one), eval mode."""
    fmt, rank = option
    layer = spec.make() if fmt == "dense" else FORMATS[fmt].from_spec(spec, _to_rank(rank))
    return layer.eval()


def clock_for(threads: int) -> Callable[[], float]:
    """The timer for `threads` intra-op threads: process CPU time at 1 thread, wall time else.

    On one thread the CPU time the process spends *is* its latency on an idle core, and it does
    not count the slices other processes take on a shared core; with several threads CPU time
    sums over threads, so only wall time measures latency there.
    """
    return time.process_time if int(threads) == 1 else time.perf_counter


def interleaved_ms(fns: Sequence[Callable[[], object]], rounds: int = 5,
                   block_s: float = 0.01, clock: Callable[[], float] = time.perf_counter
                   ) -> list[float]:
    """Median ms per call of each `fns[i]()`, timed with `clock` in `rounds` interleaved rounds.

    Each function is warmed up twice; a round runs every function `k_i` times back to back
    (`k_i · t_i ≈ block_s`), alternating the order of functions every round.
    """
    reps = []
    for f in fns:
        f()
        start = clock()
        f()
        reps.append(max(1, math.ceil(block_s / max(clock() - start, 1e-7))))
    times: list[list[float]] = [[] for _ in fns]
    for r in range(max(1, rounds)):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            start = clock()
            for _ in range(reps[i]):
                fns[i]()
            times[i].append((clock() - start) / reps[i])
    return [1e3 * statistics.median(t) for t in times]


def layer_input_shape(spec: LayerSpec, input_hw: Pair, batch: int) -> tuple[int, ...]:
    """`(batch, c, H, W)` for a conv; `(batch, tokens, in)` for a linear (`(batch, in)` at one
    token)."""
    if isinstance(spec, LinearSpec):
        rows = int(input_hw[0])
        return (batch, rows, spec.in_features) if rows > 1 else (batch, spec.in_features)
    return (batch, spec.in_channels, int(input_hw[0]), int(input_hw[1]))


def measure_layer(spec: LayerSpec, input_hw: Pair, options: Sequence[Option], precision: str,
                  batch: int, channels_last: bool, rounds: int = 5,
                  seed: int = 0, threads: int = 1, onnx: bool = False) -> dict[Option, float]:
    """Measured ms of each option on a random input (`layer_input_shape`), interleaved
    (`clock_for(threads)`; the caller sets torch's thread count). `onnx`: each option exported
    to a float32 ONNX graph and run alone in ONNX Runtime (`analysis.latency.onnx_runner`);
    a lone session adds the same few µs to every option of a layer."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(layer_input_shape(spec, input_hw, batch), generator=gen)
    if onnx:
        mods = [onnx_runner(build_option(spec, o), tuple(x.shape[1:]), x) for o in options]
    else:
        x = prepare_input(x, precision, channels_last)
        mods = [prepare_module(build_option(spec, o), precision, channels_last) for o in options]
    with precision_context(precision):
        ms = interleaved_ms([lambda m=m: m(x) for m in mods], rounds=rounds,
                            clock=clock_for(threads))
    return dict(zip(options, ms, strict=True))


def fill_table(table: LatencyTable, layers: dict[str, tuple[LayerSpec, Pair, list[Option]]],
               rounds: int = 5, log: Callable[[str], None] | None = None) -> int:
    """Measure every option missing from `table` for the distinct layers of `layers` (values:
    (spec, input_hw, options)); when any option of a layer is missing, the whole layer (dense
    included) is re-timed together so its ratios come from one interleaved run. Saves the table
    after each layer when it has a cache file. Returns the number of layers timed."""
    k = table.key
    done, timed = set(), 0
    for spec, hw, options in layers.values():
        lk = layer_key(spec, hw)
        if lk in done or not table.missing(lk, options):
            done.add(lk)
            continue
        done.add(lk)
        with _threads(k.threads):
            ms = measure_layer(spec, hw, options, k.precision, k.batch, k.channels_last, rounds,
                               threads=k.threads, onnx=k.onnx)
        for o, v in ms.items():
            table.put(lk, o, v)
        timed += 1
        if log is not None:
            log(f"timed {lk}: dense {ms[DENSE]:.3f} ms, {len(options) - 1} candidates")
        if table.path is not None:
            table.save()
    return timed


def fixed_fraction(model: nn.Module, input_shape: Sequence[int], names: Sequence[str],
                   precision: str, batch: int, threads: int, channels_last: bool = True,
                   onnx: bool = False, rounds: int = 3, example: Inputs | None = None) -> float:
    """Share of the deployed dense model's time spent outside the layers `names`, at `batch`.

    The model (`to_deploy` in `precision`, or with `onnx` its ONNX graph in ONNX Runtime) and
    the layers alone (each run on the input it gets in the model; in ONNX Runtime each in a
    session of its own) are timed interleaved, so the share does not depend on the load at the
    time; the allocator scales it to the table's units: `fixed_ms = share / (1 − share) · Σ dense
    layer ms`. The model runs on `example` (a tensor, a tuple of positional inputs or keyword
    inputs such as token ids, rebatched to `batch`), else on random `(batch, *input_shape)`.
    In ONNX Runtime the lone layers can take longer than the whole graph (session overhead, no
    conv + BN + ReLU fusion): the share is then negative, down to −1, which removes that excess.
    """
    d = copy.deepcopy(model).float().eval() if onnx else \
        to_deploy(model, precision, channels_last).model
    if example is None:
        example = torch.randn((batch, *input_shape))
    x = prepare_inputs(rebatch(example, batch), precision, channels_last)
    mods = {n: d.get_submodule(n) for n in names}
    inputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda _m, a, n=n: inputs.__setitem__(n, a[0]))
               for n, m in mods.items()]
    with precision_context(precision), torch.no_grad():
        call_model(d, x)
    for h in handles:
        h.remove()
    shared: dict[tuple[Any, ...], torch.Tensor] = {}  # one input tensor per distinct shape
    for n, t in inputs.items():
        inputs[n] = shared.setdefault((tuple(t.shape), t.dtype), t)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if onnx:  # built at `threads` intra-op threads: the sessions keep it
            d = onnx_runner(d, tuple(input_shape), x)
            mods = {n: onnx_runner(m, tuple(inputs[n].shape[1:]), inputs[n])
                    for n, m in mods.items() if n in inputs}

        def layers_only() -> None:
            for n, m in mods.items():
                if n in inputs:
                    m(inputs[n])

        with precision_context(precision), torch.no_grad():
            total, alone = interleaved_ms([lambda: call_model(d, x), layers_only], rounds=rounds,
                                          block_s=0.0, clock=clock_for(threads))
    finally:
        torch.set_num_threads(old)
    return min(0.95, max(-1.0 if onnx else 0.0, 1.0 - alone / total))


class _threads:
    def __init__(self, n: int) -> None:
        self.n, self.old = int(n), torch.get_num_threads()

    def __enter__(self) -> None:
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.old)


__all__ = ["CONV_FORMATS", "LINEAR_FORMAT", "MAC_FRACTIONS", "build_option", "candidate_ranks",
           "clock_for", "default_align", "fill_table", "fixed_fraction", "interleaved_ms",
           "layer_input_shape", "layer_options", "measure_layer"]
