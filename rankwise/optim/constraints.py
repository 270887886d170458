"""SFW constraints: factory by name, radii from the initialization, and param groups for a model.

The sets themselves live in `constraints_vector.py` (L2, L1, L∞, K-sparse, K-support,
group-K-support), `constraints_lp.py` (Lp, any p ≥ 1) and `constraints_spectral.py` (nuclear,
spectral-K-sparse, spectral-K-support); this module re-exports them.

Radius convention (`lmo_mode='initialization'` of ZIB-IOL compression-aware-SFW, code): a
layer's constraint gets the L2 diameter `D = 2 · width · E‖W_init‖_F`, the expectation taken over
`samples` (100 in the reference) calls of the layer's `reset_parameters()`; a zero expectation
(BatchNorm bias) counts as 1. Each set turns D into its own radius (see the set's docstring).
Defaults `k=0.3`, `width=10` are those of the reference's example config (`main.py`); the paper's
per-experiment values are unverified.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from rankwise.errors import ConfigError
from rankwise.optim.constraints_lp import LpBall
from rankwise.optim.constraints_spectral import (
    NuclearBall,
    SpectralConstraint,
    SpectralKSparsePolytope,
    SpectralKSupportBall,
)
from rankwise.optim.constraints_vector import (
    Constraint,
    GroupKSupportBall,
    KSparsePolytope,
    KSupportBall,
    L1Ball,
    L2Ball,
    LInfBall,
    Unconstrained,
    k_support_norm,
    resolve_k,
)

__all__ = [
    "Constraint", "Unconstrained", "L2Ball", "L1Ball", "LInfBall", "LpBall", "KSparsePolytope",
    "KSupportBall", "GroupKSupportBall", "NuclearBall", "SpectralConstraint",
    "SpectralKSparsePolytope", "SpectralKSupportBall", "CONSTRAINTS", "STRUCTURED", "PARAMETRIC",
    "k_support_norm", "resolve_k", "make_constraint", "expected_init_norm", "radius_from_init",
    "diameter_from_init", "make_param_groups", "shift_model_to_feasible",
]

STRUCTURED = ("spectral-k-support", "spectral-k-sparse", "nuclear", "group-k-support")
"""Settings that constrain Conv2d weights only (and Linear weights if asked); L2 elsewhere."""

CONSTRAINTS = (*STRUCTURED, "l2", "l1", "linf", "k-sparse", "k-support", "unconstrained")
SPECTRAL = ("nuclear", "spectral-k-sparse", "spectral-k-support")
PARAMETRIC = ("lp",)
"""Sets that need an extra parameter (`p=`); accepted by `make_constraint`/`make_param_groups`
but not in `CONSTRAINTS` (the names a caller can use with no further option)."""

Shape = Sequence[int]


def make_constraint(
    name: str, shape: Shape, *, k: int | float | None = None, radius: float | None = None,
    diameter: float | None = None, p: float | None = None, **opts: Any,
) -> Constraint:
    """Constraint `name` for one parameter of `shape`, with exactly one of radius/diameter.

    `k` (count or fraction) is required by the K-sets: entries for k-sparse/k-support, output
    filters `shape[0]` for group-k-support, max rank `min(n, prod(shape[1:]))` for spectral ones.
    `p` (>= 1, `math.inf` allowed) is required by "lp". `opts` (method, steps, warm_start, seed)
    go to the spectral sets only.
    """
    shape = tuple(int(s) for s in shape)
    numel = math.prod(shape)
    if name == "unconstrained":
        return Unconstrained()
    if name in ("l2", "l1"):
        return (L2Ball if name == "l2" else L1Ball)(radius=radius, diameter=diameter)
    if name == "linf":
        return LInfBall(numel, radius=radius, diameter=diameter)
    if name == "lp":
        if p is None:
            raise ConfigError("constraint 'lp' needs p= (an exponent >= 1, or inf)")
        return LpBall(numel, p, radius=radius, diameter=diameter)
    if name not in CONSTRAINTS + PARAMETRIC:
        names = ", ".join(CONSTRAINTS + PARAMETRIC)
        raise ConfigError(f"unknown constraint {name!r}; choose one of {names}")
    if name == "nuclear" or name in ("spectral-k-sparse", "spectral-k-support", "group-k-support"):
        if len(shape) < 2:
            raise ConfigError(
                f"constraint {name!r} needs a weight with >= 2 dims, got shape {shape}; "
                "use 'l2' for biases and norm layers"
            )
    if name == "nuclear":
        return NuclearBall(radius=radius, diameter=diameter, **opts)
    if k is None:
        raise ConfigError(f"constraint {name!r} needs k= (an int count or a float fraction)")
    if name == "k-sparse":
        return KSparsePolytope(numel, k, radius=radius, diameter=diameter)
    if name == "k-support":
        return KSupportBall(numel, k, radius=radius, diameter=diameter)
    if name == "group-k-support":
        return GroupKSupportBall(shape[0], k, radius=radius, diameter=diameter)
    max_rank = min(shape[0], numel // shape[0])
    cls = SpectralKSparsePolytope if name == "spectral-k-sparse" else SpectralKSupportBall
    return cls(max_rank, k, radius=radius, diameter=diameter, **opts)


def _norm_of(w: torch.Tensor, norm: str) -> float:
    w = w.detach().to(torch.float64)
    if norm == "fro":
        return float(torch.linalg.vector_norm(w))
    if norm == "l1":
        return float(w.abs().sum())
    if norm == "inf":
        return float(w.abs().max())
    if norm == "nuc":
        return float(torch.linalg.svdvals(w.reshape(w.shape[0], -1)).sum())
    raise ConfigError(f"unknown norm {norm!r} for the init radius; use 'fro', 'l1', 'inf', 'nuc'")


def _module_devices(module: nn.Module) -> list[torch.device]:
    return sorted({p.device for p in module.parameters() if p.device.type == "cuda"}, key=str)


def expected_init_norm(
    source: nn.Module | Callable[[], nn.Module] | Shape, param: str = "weight", *,
    samples: int = 100, seed: int = 0, norm: str = "fro",
) -> float:
    """`E‖W_init‖` (Frobenius by default) of PyTorch's default init, averaged over `samples` draws.

    `source` is a module (a deep copy is re-initialized with `reset_parameters()`, the module
    itself is untouched), a zero-argument factory building a fresh module per draw, or a weight
    shape `(n, c, ...)` with >= 2 dims (the Linear/Conv default, kaiming-uniform with a=√5, i.e.
    U(±1/√fan_in)). The global RNG is forked and seeded with `seed`. A zero result (a
    zero-initialized bias) returns 1.0, as in the reference code.
    """
    if samples < 1:
        raise ConfigError(f"expected_init_norm needs samples >= 1, got {samples}")
    total = 0.0
    if isinstance(source, nn.Module) or callable(source):
        if isinstance(source, nn.Module):
            if not hasattr(source, "reset_parameters"):
                raise ConfigError(
                    f"{type(source).__name__} has no reset_parameters(); pass a factory or shape"
                )
            module = copy.deepcopy(source)
            devices = _module_devices(module)
        else:
            module, devices = None, []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            for _ in range(samples):
                if module is not None:
                    module.reset_parameters()
                    m = module
                else:
                    m = source()
                w = getattr(m, param, None)
                if not isinstance(w, torch.Tensor):
                    raise ConfigError(f"{type(m).__name__} has no tensor attribute {param!r}")
                total += _norm_of(w, norm)
    else:
        shape = tuple(int(s) for s in source)
        if len(shape) < 2:
            raise ConfigError(
                f"an init norm from a bare shape needs >= 2 dims (Linear/Conv weight), got {shape};"
                " pass the module for biases and norm layers"
            )
        bound = 1.0 / math.sqrt(math.prod(shape[1:]))
        gen = torch.Generator().manual_seed(int(seed))
        for _ in range(samples):
            w = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
            total += _norm_of(w, norm)
    mean = total / samples
    return mean if mean > 0 else 1.0


def radius_from_init(
    source: nn.Module | Callable[[], nn.Module] | Shape, value: float, param: str = "weight",
    *, samples: int = 100, seed: int = 0, norm: str = "fro",
) -> float:
    """L2 radius `value · E‖W_init‖` (= D / 2); see `expected_init_norm` for the arguments."""
    if not value > 0:
        raise ConfigError(f"the init-radius factor (width) must be > 0, got {value}")
    return value * expected_init_norm(source, param, samples=samples, seed=seed, norm=norm)


def diameter_from_init(
    source: nn.Module | Callable[[], nn.Module] | Shape, value: float, param: str = "weight",
    *, samples: int = 100, seed: int = 0, norm: str = "fro",
) -> float:
    """L2 diameter `D = 2 · value · E‖W_init‖` of the reference code's 'initialization' mode."""
    return 2.0 * radius_from_init(source, value, param, samples=samples, seed=seed, norm=norm)


def make_param_groups(
    model: nn.Module, constraint: str = "spectral-k-support", k: int | float | None = 0.3,
    width: float = 10.0, *, include_linear: bool = False, samples: int = 100, seed: int = 0,
    **constraint_opts: Any,
) -> list[dict[str, Any]]:
    """One SFW param group `{"params": [p], "constraint": C, "name": "layer.weight"}` per
    trainable parameter, with `D = 2 · width · E‖p_init‖_F` from the owning module's init.

    Structured settings (`STRUCTURED`) put `constraint` on every Conv2d weight (and every Linear
    weight if `include_linear`) and an L2 ball on every other parameter (BN, biases, linear), as
    the paper does; other settings put `constraint` on every parameter. Parameters of modules
    without `reset_parameters()` use their current Frobenius norm (1 if zero). `constraint_opts`
    (method, steps, warm_start, seed) are passed to spectral sets, `p` to "lp". The model is
    not modified.
    """
    if constraint not in CONSTRAINTS + PARAMETRIC:
        raise ConfigError(f"unknown constraint {constraint!r}; choose one of "
                          f"{', '.join(CONSTRAINTS + PARAMETRIC)}")
    targets: tuple[type[nn.Module], ...] = (nn.Conv2d,)
    if include_linear:
        targets = (nn.Conv2d, nn.Linear)
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    cache: dict[tuple[Any, ...], float] = {}
    for mname, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        for pname, p in own:
            if id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mname}.{pname}" if mname else pname
            name = constraint
            if constraint in STRUCTURED and not (pname == "weight" and isinstance(module, targets)):
                name = "l2"
            if hasattr(module, "reset_parameters"):
                key = (type(module), module.extra_repr(), pname, tuple(p.shape))
                if key not in cache:  # identical layers share one estimate, as in the reference
                    cache[key] = diameter_from_init(module, width, pname, samples=samples,
                                                    seed=seed)
                d = cache[key]
            else:
                cur = float(torch.linalg.vector_norm(p.detach().to(torch.float64)))
                d = 2.0 * width * (cur if cur > 0 else 1.0)
            opts = {k_: v for k_, v in constraint_opts.items() if k_ != "p"}
            if name not in SPECTRAL:
                opts = {"p": constraint_opts.get("p")} if name == "lp" else {}
            try:
                c = make_constraint(name, p.shape, k=k, diameter=d, **opts)
            except ConfigError as err:
                raise ConfigError(f"{full}: {err}") from err
            groups.append({"params": [p], "constraint": c, "name": full})
    return groups


@torch.no_grad()
def shift_model_to_feasible(
    model: nn.Module, groups: Iterable[dict[str, Any]]
) -> list[str]:
    """Rescale every group's parameters into its constraint (in place); returns the names (or
    indices) of the groups that were moved (those outside by more than 1e-6 relative, i.e. more
    than float32 rounding). `groups` may be `optimizer.param_groups`."""
    owned = {id(p) for p in model.parameters()}
    moved = []
    for i, group in enumerate(groups):
        params, c = list(group["params"]), group.get("constraint")
        if not isinstance(c, Constraint):
            raise ConfigError(f"param group {group.get('name', i)} has no Constraint")
        if any(id(p) not in owned for p in params):
            raise ConfigError(f"param group {group.get('name', i)} holds parameters not in model")
        if not c.bounded or c.is_feasible(params, tol=1e-6):
            continue
        for p, new in zip(params, c.shift_to_feasible(params), strict=True):
            p.copy_(new)
        moved.append(str(group.get("name", i)))
    return moved
