"""Per-step training cost of each method against dense SGD on the same architecture.

One training step = forward + backward + the method's extra work + optimizer step, batch 128,
random 32×32 inputs (data loading excluded). All setups are stepped in alternation (ABCD…
rounds) so that load from other processes hits them alike; medians of wall and CPU time.

Setups: dense SGD; TRP (channel, e = 0.9, m = 1, λ = 3e-4; one batched SVD per weight shape);
SFW (spectral-K-support, K = 0.3, power-iteration LMO); ELRT Tucker-2 built at 2× and 4× MACs
reduction (`budget:macs`), with and without channels_last. Run:
`python -m rankwise.bench.overhead` (prints Markdown).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rankwise.analysis.profile import count
from rankwise.models import create_model


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)


def _step_fn(model: nn.Module, opt: torch.optim.Optimizer, methods: list[Any],
             x: torch.Tensor, y: torch.Tensor) -> Callable[[int], None]:
    """One training step of `model` driven through the methods' loop-agnostic life cycle."""

    def step(i: int) -> None:
        for m in methods:
            m.before_forward(i)
        loss = F.cross_entropy(model(x), y)
        for m in methods:
            pen = m.penalty()
            if pen is not None:
                loss = loss + pen
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for m in methods:
            m.after_backward(i)
        opt.step()
        for m in methods:
            m.after_step(i)

    return step


def build_setups(model_name: str = "resnet20", input_shape: tuple[int, int, int] = (3, 32, 32),
                 batch_size: int = 128, seed: int = 0) -> dict[str, dict[str, Any]]:
    """name → {"step": fn(i), "macs": MACs per sample, "params": int}."""
    from rankwise.methods import ELRT, TRP, ELRTConfig, SFWConfig, TRPConfig, build_sfw

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *input_shape, generator=g)
    y = torch.randint(0, 10, (batch_size,), generator=g)
    setups: dict[str, dict[str, Any]] = {}

    def add(name: str, model: nn.Module, opt: torch.optim.Optimizer, methods: list[Any],
            channels_last: bool = False) -> None:
        xx = x
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            xx = x.contiguous(memory_format=torch.channels_last)
        _, params, macs = count(model, input_shape)
        setups[name] = {"step": _step_fn(model.train(), opt, methods, xx, y), "params": params,
                        "macs": macs}

    torch.manual_seed(seed)
    m = create_model(model_name)
    add("dense SGD", m, _sgd(m), [])
    torch.manual_seed(seed)
    m = create_model(model_name)
    add("TRP (m=1, λ=3e-4)", m, _sgd(m), [TRP(m, TRPConfig(), input_shape=input_shape)])
    torch.manual_seed(seed)
    m = create_model(model_name)
    add("SFW spectral-K-support", m, build_sfw(m, 0.1, SFWConfig()), [])
    for ratio in (2, 4):
        cfg = ELRTConfig(format="tucker2", rank=f"budget:macs={1 / ratio:g}")
        for cl in (False, True):
            torch.manual_seed(seed)
            elrt = ELRT.build(model_name, cfg, input_shape=input_shape, orth_weight=1e-3)
            m = elrt.model
            tag = f"ELRT tucker2 {ratio}× MACs" + (" (channels_last)" if cl else "")
            add(tag, m, _sgd(m), [elrt], channels_last=cl)
    torch.manual_seed(seed)
    m = create_model(model_name)
    add("dense SGD (channels_last)", m, _sgd(m), [], channels_last=True)
    return setups


def measure_overheads(model_name: str = "resnet20", batch_size: int = 128, rounds: int = 8,
                      warmup: int = 2, threads: int | None = None) -> list[dict[str, Any]]:
    """Median wall/CPU ms per step for every setup, and ratios to dense SGD."""
    if threads:
        torch.set_num_threads(threads)
    setups = build_setups(model_name, batch_size=batch_size)
    wall: dict[str, list[float]] = {k: [] for k in setups}
    cpu: dict[str, list[float]] = {k: [] for k in setups}
    for i in range(warmup + rounds):
        order = list(setups) if i % 2 == 0 else list(reversed(setups))
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            setups[name]["step"](i)
            if i >= warmup:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    base = setups["dense SGD"]
    bw, bc = statistics.median(wall["dense SGD"]), statistics.median(cpu["dense SGD"])
    rows = []
    for name, s in setups.items():
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        macs_x = base["macs"] / s["macs"]
        rows.append({"setup": name, "params": s["params"], "macs_x": macs_x,
                     "wall_ms": 1e3 * w, "cpu_ms": 1e3 * c, "wall_vs_dense": w / bw,
                     "cpu_vs_dense": c / bc,
                     "speedup_over_macs": (bw / w) / macs_x if macs_x > 1.01 else None})
    return rows


def overhead_markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| setup | params | MACs × | wall ms/step | CPU ms/step | wall vs dense | "
            "CPU vs dense | speedup ÷ MACs× |\n|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['setup']} | {r['params']:,} | {r['macs_x']:.2f} | {r['wall_ms']:.0f} | "
        f"{r['cpu_ms']:.0f} | {r['wall_vs_dense']:.3f} | {r['cpu_vs_dense']:.3f} | "
        f"{'–' if r['speedup_over_macs'] is None else format(r['speedup_over_macs'], '.2f')} |\n"
        for r in rows)
    return head + body


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    print(overhead_markdown(measure_overheads(a.model, a.batch_size, a.rounds,
                                              threads=a.threads)))


if __name__ == "__main__":
    main()
