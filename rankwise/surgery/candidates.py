"""Which layers `rankwise.decompose` may factorize, and why the others stay dense.

A candidate is an `nn.Conv2d` / `nn.Linear` (or a subclass whose forward is the base class's)
selected by `include` / `exclude`. A layer stays dense, with the reason in the report, when:
- its class overrides `forward` (e.g. timm's `Conv2dSame` pads dynamically, `StdConv2d`
  standardizes its weight): a factorized layer would compute something else;
- its weight is parametrized (`torch.nn.utils.parametrize`, `weight_norm`, `spectral_norm`);
- its weight is a lazy (uninitialised) parameter;
- its weight is tied to / shared with another module (e.g. GPT-2's `lm_head` and the token
  embedding): factorizing one copy would duplicate the parameter.
`check_include` refuses an `include` pattern that matches no module; `check_weights` refuses
meta-device and non-finite weights, naming the layer.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from rankwise.analysis.profile import dense_macs
from rankwise.errors import ConfigError
from rankwise.layers import FORMATS
from rankwise.layers.base import FactorizedLayer, Rank, dense_spec_of
from rankwise.layers.shapes import conv2d_params, linear_params

Pattern = str | re.Pattern[str]
Filter = Pattern | Sequence[Pattern] | Callable[[str, nn.Module], bool] | None

# Linear subclasses whose forward is `F.linear(x, weight, bias)` outside TorchScript.
EQUIVALENT_SUBCLASSES = frozenset({"timm.layers.linear.Linear"})


@dataclass
class Candidate:
    """One layer `decompose` may factorize; `in_shape` is its first input's shape (batch first)
    from the traced forward pass, None when there was none or the layer was not called."""

    name: str
    module: nn.Module
    fmt: str
    explicit: bool
    note: str = ""
    in_shape: tuple[int, ...] | None = None
    spectra: list[torch.Tensor] = field(default_factory=list)
    max_rank: tuple[int, ...] = ()

    @property
    def tokens(self) -> int:
        n = 1
        for s in (self.in_shape or (1, 1))[1:-1]:
            n *= int(s)
        return n

    def dense_cost(self) -> tuple[int, int | None]:
        """(params, MACs per sample or None) of the dense layer."""
        spec = dense_spec_of(self.module)
        params = conv2d_params(spec) if isinstance(self.module, nn.Conv2d) else linear_params(spec)
        macs = dense_macs(self.module, self.in_shape) if self.in_shape is not None else None
        return params, macs

    def cost(self, rank: Rank) -> tuple[int, int | None]:
        """(params, MACs per sample or None) of the factorized layer at `rank`."""
        cls, spec = FORMATS[self.fmt], dense_spec_of(self.module)
        if isinstance(self.module, nn.Linear):
            params, macs = cls.cost(spec, rank, None)
            return params, macs * self.tokens if self.in_shape is not None else None
        hw = None if self.in_shape is None else (self.in_shape[-2], self.in_shape[-1])
        params, macs = cls.cost(spec, rank, hw)
        return params, macs if hw is not None else None


def matches(name: str, module: nn.Module, patterns: Filter) -> bool:
    """Whether module `name` is selected by `patterns`.

    A string matches by glob (`fnmatch`, e.g. `"layer1.*"`, `"fc"`) or, failing that, by regex
    `fullmatch`; a compiled `re.Pattern` by `search`; a callable is called as `f(name, module)`.
    A sequence matches when any element does.
    """
    if patterns is None:
        return False
    if callable(patterns) and not isinstance(patterns, re.Pattern):
        return bool(patterns(name, module))
    if isinstance(patterns, (str, re.Pattern)):
        patterns = [patterns]
    for p in patterns:
        if isinstance(p, re.Pattern):
            if p.search(name):
                return True
        elif fnmatch.fnmatchcase(name, p):
            return True
        else:
            try:
                if re.fullmatch(p, name):
                    return True
            except re.error:
                pass
    return False


def check_include(model: nn.Module, include: Filter, extra_names: Sequence[str] = ()) -> None:
    """Refuse an `include` string / pattern that matches no module name of `model` (or of
    `extra_names`, e.g. attention projections), naming it and whether it is a valid regex."""
    if include is None or callable(include) and not isinstance(include, re.Pattern):
        return
    pats = [include] if isinstance(include, (str, re.Pattern)) else list(include)
    names = [n for n, _ in model.named_modules() if n] + list(extra_names)
    for p in pats:
        if any(matches(n, nn.Identity(), p) for n in names):
            continue
        valid = True
        if isinstance(p, str):
            try:
                re.compile(p)
            except re.error as e:
                valid = False
                why = f"it is not a valid regex ({e}) and as a glob it matches nothing"
        if valid:
            why = "it matches no module"
        sample = ", ".join(names[:4])
        raise ConfigError(f"include pattern {getattr(p, 'pattern', p)!r}: {why}; module names "
                          f"look like {sample}, ... (globs like 'layer1.*' or regexes)")


def _overrides_forward(mod: nn.Module) -> bool:
    cls = type(mod)
    if f"{cls.__module__}.{cls.__qualname__}" in EQUIVALENT_SUBCLASSES:
        return False
    if isinstance(mod, nn.Conv2d):
        return (cls.forward is not nn.Conv2d.forward
                or cls._conv_forward is not nn.Conv2d._conv_forward)
    return cls.forward is not nn.Linear.forward


def keep_dense_reason(mod: nn.Module, tied_to: str | None) -> str | None:
    """Why the conv/linear `mod` must stay dense, or None (see the module docstring)."""
    from torch.nn.utils import parametrize

    base = "Conv2d" if isinstance(mod, nn.Conv2d) else "Linear"
    w = mod.weight
    if isinstance(w, nn.parameter.UninitializedParameter):
        return "kept dense: weight not initialised (lazy layer); run one forward pass first"
    if parametrize.is_parametrized(mod):
        return "kept dense: weight is parametrized (torch.nn.utils.parametrize)"
    hooks = [type(h).__name__ for h in mod._forward_pre_hooks.values()]
    if any(h in ("WeightNorm", "SpectralNorm") for h in hooks):
        return "kept dense: weight is recomputed by a weight_norm/spectral_norm hook"
    if _overrides_forward(mod):
        return (f"kept dense: {type(mod).__name__} overrides nn.{base}.forward (e.g. dynamic "
                "'same' padding or weight standardization), which a factorized layer would not "
                "reproduce")
    if tied_to is not None:
        return (f"kept dense: weight is shared with {tied_to} (tied weights); factorizing one "
                "user would duplicate the parameter")
    return None


def check_weights(cands: Sequence[Candidate]) -> None:
    """Refuse meta-device or non-finite weights/biases with one line naming the layer."""
    for c in cands:
        for attr in ("weight", "bias"):
            t = c.module._parameters.get(attr)
            if t is None:
                continue
            if t.is_meta:
                raise ConfigError(
                    f"{c.name}: weights are on the meta device (no values to factorize); "
                    "materialize them first (model.to_empty(device=...) + load_state_dict)")
            if not bool(torch.isfinite(t.detach()).all()):
                raise ConfigError(
                    f"{c.name}: {attr} contains NaN/Inf; fix or reload the checkpoint (or "
                    f"exclude={c.name!r}) before decomposing")


def is_candidate_type(mod: nn.Module) -> bool:
    """`nn.Conv2d` / `nn.Linear` (subclasses included) not already factorized."""
    return isinstance(mod, (nn.Conv2d, nn.Linear)) and not isinstance(mod, FactorizedLayer)
