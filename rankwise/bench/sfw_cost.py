"""What SFW costs per training step, measured (manual script, not a test).

`measure_sfw_cost()` times, on one CPU thread by default, on a zoo model (ResNet-20, batch 128,
3×32×32, random inputs and labels — the cost does not depend on the data):

- `train_step_ms`: a whole step (zero_grad, forward, cross-entropy, backward, optimizer step) with
  SGD (momentum 0.9, wd 1e-4), SFW + spectral-K-support (K = 0.3 of each conv's max rank, block
  power iteration, 10 steps, warm-started), SFW + nuclear ball (top pair, 20 power steps), and
  SGD + nuclear penalty (`--method nuclear-penalty`: `NuclearRegularizer`, a full SVD of every
  conv);
- `optimizer_step_ms`: `optimizer.step()` alone (plus the penalty hook's SVD + gradient update
  for the nuclear penalty) on fixed gradients;
- `lmo_ms`: the LMOs of the constrained conv weights alone, summed over the layers, for the
  nuclear ball and spectral-K-support with the default path (`method="auto"`: the exact top-K
  from a tall-side SVD here), with 10/20-step power iteration (warm and cold start), next to
  `full_svd_subgradient`: `λ·U Vᵀ` from `torch.linalg.svd` per conv (what a nuclear-norm
  penalty step needs), also summed over the layers;
- `lmo_power_error`: how far the 10-step (warm-started over `repeats` steps of the same
  gradient, and cold) spectral-K-support power vertex is from the exact one: the relative
  shortfall in `−⟨G, v⟩` and `‖v − v_exact‖ / ‖v_exact‖`, min/max over the convs.

Medians over `repeats` timed runs after `warmup` untimed ones, in milliseconds. Run:

    OMP_NUM_THREADS=1 python -m rankwise.bench.sfw_cost [--device cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rankwise.methods.nuclear import NuclearPenaltyConfig, NuclearRegularizer
from rankwise.methods.sfw import SFWConfig, build_sfw
from rankwise.models import create_model
from rankwise.optim import make_param_groups


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved_ms(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int,
                    device: torch.device) -> dict[str, float]:
    """Median ms of each function, timed round-robin so that load changes hit all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(1e3 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def _setups(model_name: str, device: torch.device) -> dict[str, tuple[nn.Module, Any, Any]]:
    """name → (model, optimizer, penalty hook or None), each from the same initialization."""
    out: dict[str, tuple[nn.Module, Any, Any]] = {}
    for name in ("sgd", "sfw_spectral_k_support", "sfw_nuclear", "sgd_nuclear_penalty"):
        torch.manual_seed(0)
        model = create_model(model_name).to(device)
        hook = None
        if name.startswith("sfw"):
            constraint = "nuclear" if name == "sfw_nuclear" else "spectral-k-support"
            opt: Any = build_sfw(model, 0.1, SFWConfig(constraint=constraint, k=0.3))
        else:
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
            if name == "sgd_nuclear_penalty":
                hook = NuclearRegularizer(model, NuclearPenaltyConfig())
        out[name] = (model, opt, hook)
    return out


def _lmo_times(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int, warmup: int,
               device: torch.device) -> dict[str, float]:
    """LMO time of every conv weight vs a full-SVD sub-gradient, summed over the layers."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    grads = [m.weight.grad.detach().clone() for m in convs]
    weights = [m.weight.detach() for m in convs]
    variants = {"nuclear_default": ("nuclear", {}),
                "nuclear_power20": ("nuclear", {"method": "power"}),
                "spectral_k_support_default": ("spectral-k-support", {}),
                "spectral_k_support_power10_warm": ("spectral-k-support", {"method": "power"}),
                "spectral_k_support_power10_cold": ("spectral-k-support",
                                                    {"method": "power", "warm_start": False})}
    fns: dict[str, Callable[[], Any]] = {}
    for label, (name, opts) in variants.items():
        groups = [g for g in make_param_groups(model, name, k=0.3, **opts)
                  if g["name"].endswith("weight") and g["params"][0].dim() == 4]
        states: list[dict[str, Any]] = [{} for _ in groups]

        def run(groups: list[dict[str, Any]] = groups, states: list[dict[str, Any]] = states
                ) -> None:
            for g, grad, st in zip(groups, grads, states, strict=True):
                g["constraint"].lmo([grad], state=st)

        fns[label] = run
    sub = [torch.zeros_like(g) for g in grads]

    def full_svd() -> None:
        for w, s in zip(weights, sub, strict=True):
            u, _, vh = torch.linalg.svd(w.flatten(1), full_matrices=False)
            s.add_((u @ vh).view_as(s), alpha=1e-4)

    fns["full_svd_subgradient"] = full_svd
    out: dict[str, Any] = dict(_interleaved_ms(fns, repeats, warmup, device))
    out["conv_layers"] = len(convs)
    return out


def lmo_power_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    warm_steps: int = 5) -> dict[str, float]:
    """Power-iteration vs exact spectral-K-support vertex on each conv's gradient (K = 0.3):
    relative objective shortfall `1 − ⟨G, v_pow⟩ / ⟨G, v_exact⟩` and relative distance."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    exact = make_param_groups(model, "spectral-k-support", k=0.3, method="exact")
    out: dict[str, list[float]] = {}
    for label, warm in (("warm", True), ("cold", False)):
        power = make_param_groups(model, "spectral-k-support", k=0.3, method="power",
                                  warm_start=warm)
        for ge, gp in zip(exact, power, strict=True):
            p = ge["params"][0]
            if p.dim() != 4:
                continue
            g = p.grad.detach()
            ve = ge["constraint"].lmo(g)
            state: dict[str, Any] = {}
            for _ in range(warm_steps if warm else 1):
                vp = gp["constraint"].lmo(g, state=state)
            short = 1.0 - float((g * vp).sum()) / float((g * ve).sum())
            dist = float(torch.linalg.vector_norm(vp - ve) / torch.linalg.vector_norm(ve))
            out.setdefault(f"{label}_objective_shortfall", []).append(short)
            out.setdefault(f"{label}_relative_distance", []).append(dist)
    return {f"{k}_{f.__name__}": f(v) for k, v in out.items() for f in (min, max)}


def measure_sfw_cost(model: str = "resnet20", batch_size: int = 128, repeats: int = 5,
                     warmup: int = 2, threads: int | None = 1, device: str = "cpu",
                     seed: int = 0) -> dict[str, Any]:
    """Step, optimizer-step and LMO timings (ms, medians) of SFW vs SGD; see the module doc."""
    dev = torch.device(device)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch_size, 3, 32, 32, generator=gen).to(dev)
        y = torch.randint(10, (batch_size,), generator=gen).to(dev)
        setups = _setups(model, dev)
        steps, opt_steps = {}, {}
        counter = itertools.count()  # the method objects act once per (new) step number
        for name, (net, opt, hook) in setups.items():
            net.train()

            def step(net: nn.Module = net, opt: Any = opt, hook: Any = hook) -> None:
                i = next(counter)
                if hook is not None:
                    hook.before_forward(i)
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(x), y).backward()
                if hook is not None:
                    hook.after_backward(i)
                opt.step()

            steps[name] = step

            def opt_step(opt: Any = opt, hook: Any = hook) -> None:
                i = next(counter)
                if hook is not None:
                    hook.before_forward(i)
                    hook.after_backward(i)
                opt.step()

            opt_steps[name] = opt_step  # on the gradients of the last full step
        train_ms = _interleaved_ms(steps, repeats, warmup, dev)
        opt_ms = _interleaved_ms(opt_steps, repeats, warmup, dev)
        torch.manual_seed(seed)
        lmo = _lmo_times(create_model(model).to(dev), x, y, repeats, warmup, dev)
        torch.manual_seed(seed)
        power_error = lmo_power_error(create_model(model).to(dev), x, y)
    finally:
        torch.set_num_threads(old_threads)
    return {
        "model": model, "batch_size": batch_size, "input_shape": [3, 32, 32],
        "device": str(dev), "threads": threads, "repeats": repeats, "warmup": warmup,
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "train_step_ms": train_ms, "optimizer_step_ms": opt_ms, "lmo_ms": lmo,
        "lmo_power_error": power_error,
        "sfw_step_overhead_vs_sgd": {k: train_ms[k] / train_ms["sgd"] for k in train_ms},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="SFW vs SGD step cost (milliseconds, medians)")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    print(json.dumps(measure_sfw_cost(a.model, a.batch_size, a.repeats, a.warmup, a.threads,
                                      a.device), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
