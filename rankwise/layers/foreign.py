"""Adapters that expose layers rankwise cannot factorize directly as plain `nn.Linear`s.

- Hugging Face `Conv1D` (GPT-2's projections): `y = x W + b` with `W (in, out)`; converted to the
  same-function `nn.Linear(in, out)` with weight `Wᵀ`.
- `nn.MultiheadAttention`: q/k/v live in one bare `in_proj_weight`; converted to
  `rankwise.layers.mha.ProjectedMultiheadAttention` with `q_proj`, `k_proj`, `v_proj`, `out_proj`
  linears.

`convert(model)` swaps them in place before candidate selection; `restore(model, conversions)`
puts the original module back wherever nothing inside the converted one was factorized, so an
untouched layer is returned bit-identical. Parameters tied to other modules are never converted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rankwise.errors import UnsupportedLayerError
from rankwise.layers.base import FactorizedLayer
from rankwise.layers.mha import ProjectedMultiheadAttention

FROM_CONV1D = "_rankwise_from_conv1d"
"""Attribute holding the HF `Conv1D` class on a layer that replaced one."""


def param_owners(model: nn.Module) -> dict[int, list[tuple[str, nn.Module]]]:
    """id(parameter) → every (module path, module) that registers it directly."""
    out: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        for p in mod._parameters.values():
            if p is not None:
                out.setdefault(id(p), []).append((name, mod))
    return out


def tied_to(mod: nn.Module, owners: dict[int, list[tuple[str, nn.Module]]],
            attrs: Sequence[str] = ("weight",)) -> str | None:
    """Path of another module sharing one of `mod`'s `attrs` parameters, or None."""
    for a in attrs:
        p = mod._parameters.get(a)
        if p is None:
            continue
        for other_name, other in owners.get(id(p), []):
            if other is not mod:
                return other_name or "the model root"
    return None


@dataclass
class Conversion:
    """`original` (at `name`) was replaced by the equivalent `converted`."""

    name: str
    original: nn.Module
    converted: nn.Module


def is_hf_conv1d(mod: nn.Module) -> bool:
    """A Hugging Face `transformers.pytorch_utils.Conv1D` (detected without importing it)."""
    cls = type(mod)
    return (cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")
            and isinstance(getattr(mod, "weight", None), torch.Tensor) and mod.weight.dim() == 2)


def conv1d_to_linear(mod: nn.Module) -> nn.Linear:
    """`nn.Linear(in, out)` computing the same as a HF `Conv1D` (weight `(in, out)` transposed)."""
    w = mod.weight
    lin = nn.Linear(w.shape[0], w.shape[1], bias=mod.bias is not None, device=w.device,
                    dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w.T)
        if mod.bias is not None:
            lin.bias.copy_(mod.bias)
    lin.weight.requires_grad_(w.requires_grad)
    if mod.bias is not None:
        lin.bias.requires_grad_(mod.bias.requires_grad)
    lin.train(mod.training)
    return lin


def _mha_to_projected(mha: nn.MultiheadAttention) -> ProjectedMultiheadAttention:
    out = ProjectedMultiheadAttention.from_mha(mha)
    in_w = mha.in_proj_weight if mha._qkv_same_embed_dim else mha.q_proj_weight
    for p in (out.q_proj, out.k_proj, out.v_proj):
        p.weight.requires_grad_(in_w.requires_grad)
        if p.bias is not None and mha.in_proj_bias is not None:
            p.bias.requires_grad_(mha.in_proj_bias.requires_grad)
    out.out_proj.weight.requires_grad_(mha.out_proj.weight.requires_grad)
    if out.out_proj.bias is not None:
        out.out_proj.bias.requires_grad_(mha.out_proj.bias.requires_grad)
    return out


ParentIndex = dict[int, list[tuple[nn.Module, str]]]


def parent_index(model: nn.Module) -> ParentIndex:
    """id(child) → every (parent, attribute name) registering it, for `replace_module`."""
    out: ParentIndex = {}
    for parent in model.modules():
        for child_name, child in parent._modules.items():
            if child is not None:
                out.setdefault(id(child), []).append((parent, child_name))
    return out


def replace_module(model: nn.Module, old: nn.Module, new: nn.Module,
                   index: ParentIndex | None = None) -> None:
    """Put `new` at every place `old` is registered in `model` (`index` from `parent_index`
    saves a walk over the model; it is updated)."""
    places = (index or parent_index(model)).get(id(old), [])
    for parent, child_name in places:
        setattr(parent, child_name, new)
    if index is not None:
        index[id(new)] = index.pop(id(old), [])


def copy_hooks(old: nn.Module, new: nn.Module) -> bool:
    """Carry `old`'s forward (pre-)hooks over to `new`; True if there were any."""
    found = False
    for attr in ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                 "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
        src = getattr(old, attr, None)
        if src:
            getattr(new, attr).update(src)
            found = found or attr in ("_forward_pre_hooks", "_forward_hooks")
    return found


def convert(model: nn.Module) -> tuple[list[Conversion], dict[str, str]]:
    """Swap HF `Conv1D`s and `nn.MultiheadAttention`s for equivalent modules, in place.

    Returns the conversions and, for modules left as they were, `{path: reason kept dense}`.
    """
    owners = param_owners(model)
    done: list[Conversion] = []
    skipped: dict[str, str] = {}
    for name, mod in list(model.named_modules()):
        if not name or any(name.startswith(c.name + ".") for c in done):
            continue
        if _inside_factorized(model, name):
            continue
        new: nn.Module | None = None
        if is_hf_conv1d(mod):
            other = tied_to(mod, owners)
            if other is not None:
                skipped[name] = (f"kept dense: weight is shared with {other} (tied weights); "
                                 "factorizing one user would duplicate the parameter")
                continue
            new = conv1d_to_linear(mod)
        elif isinstance(mod, nn.MultiheadAttention):
            attrs = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
            other = tied_to(mod, owners, attrs) or tied_to(mod.out_proj, owners)
            if other is not None:
                skipped[name] = f"kept dense: attention weights are shared with {other}"
                continue
            try:
                new = _mha_to_projected(mod)
            except UnsupportedLayerError as e:
                skipped[name] = f"kept dense: {e}"
                continue
        if new is not None:
            copy_hooks(mod, new)
            replace_module(model, mod, new)
            done.append(Conversion(name, mod, new))
    return done, skipped


def _inside_factorized(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), FactorizedLayer)
               for i in range(1, len(parts)))


def restore(model: nn.Module, conversions: list[Conversion],
            index: ParentIndex | None = None) -> list[Conversion]:
    """Put back each original module whose converted form is still in `model` with nothing
    factorized inside; returns the conversions that stay."""
    present = {id(m) for m in model.modules()}
    kept = []
    for c in conversions:
        untouched = id(c.converted) in present and not any(
            isinstance(m, FactorizedLayer) for m in c.converted.modules())
        if untouched:
            replace_module(model, c.converted, c.original, index)
        else:
            kept.append(c)
    return kept


def to_original_type(mod: nn.Module) -> nn.Module | None:
    """The module a converted one stands for (used by `to_dense`), or None if not converted:
    `nn.MultiheadAttention` for a `ProjectedMultiheadAttention`, the HF `Conv1D` for a linear
    marked with `FROM_CONV1D` (its original class)."""
    if isinstance(mod, ProjectedMultiheadAttention):
        return mod.to_mha()
    cls = getattr(mod, FROM_CONV1D, None)
    if cls is not None and isinstance(mod, nn.Linear):
        out = cls(mod.out_features, mod.in_features)  # Conv1D(nf, nx)
        out = out.to(device=mod.weight.device, dtype=mod.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(mod.weight.T)
            if mod.bias is not None:
                out.bias.copy_(mod.bias)
        out.train(mod.training)
        return out
    return None


def convert_for(model: nn.Module, names: list[str] | set[str]) -> list[Conversion]:
    """Convert only what a saved factorized model needs: each `nn.MultiheadAttention` that is the
    parent of a name in `names` (e.g. `"blocks.0.attn.q_proj"`) and each HF `Conv1D` named in
    `names`. For loaders that rebuild the dense architecture and then place factorized layers
    by path (`rankwise.io.load`)."""
    names = set(names)
    parents = {n.rsplit(".", 1)[0] for n in names if "." in n}
    done = []
    for name, mod in list(model.named_modules()):
        new: nn.Module | None = None
        if isinstance(mod, nn.MultiheadAttention) and name in parents:
            new = _mha_to_projected(mod)
        elif is_hf_conv1d(mod) and name in names:
            new = conv1d_to_linear(mod)
        if new is not None:
            copy_hooks(mod, new)
            replace_module(model, mod, new)
            done.append(Conversion(name, mod, new))
    return done
