"""`LatencyBudget`: a whole-model *measured-latency* target; ranks and formats chosen per layer.

Like `MacsBudget` it is a global policy (`is_global = True`, resolved over all candidate layers at
once), but its cost is the time each option takes on this machine in the deployed precision,
read from a `LatencyTable` (measured once and cached; `analytic_ms` where not measured), and
each k×k conv may become channel, spatial or Tucker-2, a 1×1 conv channel, a linear the
two-factor `svd` format — or stay dense — whichever loses the least energy per millisecond saved
(`latency_solve.solve`). Energy is each layer's retained σ² fraction in the chosen format
(`budget.retained_energy`), the same proxy the MACs allocator uses.

`target = ratio · T_dense`, `T_dense = fixed + Σ dense layer ms` at `batch`: the time outside
the candidate layers (BN-free deployed model: activations, adds, pooling, attention, norms)
stays fixed; its share of the model is measured once per model and cached (`fixed_fraction`).
Or `target_ms` directly. Inputs are images or anything a model takes (token ids by keyword for
a Hugging Face model): linears are timed at the rows per sample they see in the model.
"""

from __future__ import annotations

import copy
import hashlib
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from rankwise.analysis.latency import RUNTIMES
from rankwise.analysis.macs import Inputs
from rankwise.analysis.precision import warn_if_emulated
from rankwise.errors import ConfigError, LatencyTargetWarning
from rankwise.io.export_precision import check_precision
from rankwise.layers import FORMATS
from rankwise.layers.base import dense_spec_of
from rankwise.layers.shapes import Pair
from rankwise.surgery.budget import retained_energy
from rankwise.surgery.latency_inputs import candidate_layers, extent, layer_inputs
from rankwise.surgery.latency_measure import (
    CONV_FORMATS,
    default_align,
    fill_table,
    fixed_fraction,
    layer_options,
)
from rankwise.surgery.latency_solve import solve
from rankwise.surgery.latency_table import (
    DENSE,
    LatencyTable,
    LayerSpec,
    Option,
    TableKey,
    analytic_ms,
    layer_key,
)

Choice = tuple[str, int | tuple[int, ...]] | None


@dataclass(frozen=True)
class LatencyBudget:
    """Whole-model latency target: `ratio` (after / before, in (0, 1]) or `target_ms`.

    `precision` / `batch` / `threads` / `channels_last`: the setting the time is measured in
    (deploy in the same one). `formats`: what a k×k conv may become (1×1 convs: channel only).
    `align`: rank multiple (default 16 fp32, 32 bf16). `min_gain`: an option must be at least
    this fraction faster than the dense layer in the table. `measure=False` never times: missing
    entries use `analytic_ms`. `table`: a ready table (tests, offline use); `fixed_ms`: time
    outside the candidate layers, if known (else measured from the dense model). `runtime`:
    "torch" (eager, deployed with `to_deploy`) or "onnxruntime" (every layer option and the
    dense model run as float32 ONNX graphs in ONNX Runtime; fp32 only).
    """

    ratio: float | None = None
    target_ms: float | None = None
    precision: str = "fp32"
    batch: int = 8
    threads: int = 1
    channels_last: bool = True
    formats: tuple[str, ...] = CONV_FORMATS
    align: int | None = None
    min_gain: float = 0.03
    measure: bool = True
    cache_dir: str | None = None
    fixed_ms: float | None = None
    runtime: str = "torch"
    table: LatencyTable | None = field(default=None, compare=False, repr=False)

    metric: ClassVar[str] = "latency"
    is_global: ClassVar[bool] = True
    needs_spectra: ClassVar[bool] = False  # latency_plan reads each format's spectra itself
    needs_shapes: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.target_ms is None):
            raise ConfigError("LatencyBudget needs exactly one of ratio= (e.g. 0.5 for 2× faster) "
                              "or target_ms= (--target-latency MS)")
        if self.ratio is not None and not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"latency budget ratio must be in (0, 1], got {self.ratio}")
        if self.target_ms is not None and not self.target_ms > 0.0:
            raise ConfigError(f"--target-latency must be > 0 ms, got {self.target_ms}")
        object.__setattr__(self, "precision", check_precision(self.precision))
        object.__setattr__(self, "formats", tuple(self.formats))
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"LatencyBudget: runtime={self.runtime!r}, choose one of {RUNTIMES}")
        if self.runtime == "onnxruntime":
            if self.precision != "fp32":
                raise ConfigError("LatencyBudget: runtime='onnxruntime' times float32 graphs; "
                                  f"precision={self.precision!r} is not one (use fp32)")
            object.__setattr__(self, "channels_last", False)  # ONNX Runtime picks its layout
        bad = [f for f in self.formats if f not in CONV_FORMATS]
        if bad or self.batch < 1 or self.threads < 1 or not 0.0 <= self.min_gain < 1.0:
            raise ConfigError(f"LatencyBudget: formats {bad} not in {CONV_FORMATS}, or batch "
                              f"{self.batch} / threads {self.threads} < 1, or min_gain "
                              f"{self.min_gain} outside [0, 1)")

    def select(self, spectra: Any, max_rank: Any, shapes: Any = None) -> tuple[int, ...]:
        raise ConfigError(f"{self} is a global budget: it is resolved over all layers at once by "
                          "rankwise.surgery.latency_budget.allocate_latency, not per layer")

    def key(self) -> TableKey:
        return TableKey.here(self.precision, self.threads, self.batch, self.channels_last,
                             self.runtime)

    def __str__(self) -> str:
        head = (f"budget:latency={self.ratio!r}" if self.ratio is not None
                else f"budget:latency_ms={self.target_ms!r}")
        tail = "" if self.runtime == "torch" else f",runtime={self.runtime}"
        return (f"{head},precision={self.precision},batch={self.batch},threads={self.threads}"
                + tail)


PLAN_FIX = ("the plan fits this CPU's emulated kernels: plan on a CPU like the one you deploy "
            "bf16 to, or plan in fp32")
_LAT = re.compile(r"budget:latency(_ms)?=([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)((?:,[a-z_]+=[^,]+)*)")


def parse_latency_budget(text: str) -> LatencyBudget | None:
    """`"budget:latency=0.5"` / `"budget:latency_ms=120,precision=bf16,batch=8,threads=1"` →
    `LatencyBudget`; None if `text` is not a latency budget."""
    m = _LAT.fullmatch(str(text).strip().lower().replace(" ", ""))
    if not m:
        return None
    kw: dict[str, Any] = {"target_ms" if m.group(1) else "ratio": float(m.group(2))}
    for part in filter(None, m.group(3).split(",")):
        k, v = part.split("=", 1)
        if k not in ("precision", "batch", "threads", "runtime"):
            raise ConfigError(f"rank {text!r}: unknown latency-budget option {k!r}; use "
                              "precision=, batch=, threads=, runtime=")
        kw[k] = v if k in ("precision", "runtime") else int(v)
    return LatencyBudget(**kw)


@dataclass
class LatencyPlan:
    """What `latency_plan` chose; times in ms per forward pass at the policy's batch."""

    choices: dict[str, Choice]
    rows: list[dict[str, Any]]
    dense_ms: float
    fixed_ms: float
    target_ms: float
    predicted_ms: float
    met: bool
    energy: float  # mean retained energy over the candidate layers (dense = 1)
    table_key: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"choices": {k: None if v is None else [v[0], v[1]] for k, v in
                            self.choices.items()}, "rows": self.rows, "dense_ms": self.dense_ms,
                "fixed_ms": self.fixed_ms, "target_ms": self.target_ms,
                "predicted_ms": self.predicted_ms, "met": self.met, "energy": self.energy,
                "table_key": self.table_key}


def model_fingerprint(model: nn.Module, input_shape: Sequence[int],
                      layers: Sequence[str] = ()) -> str:
    """`"model:<sha>"` of the module tree, the input shape and the names of the layers timed
    alone: the table row of the dense model (`{"fixed_share": share of time outside them}`)."""
    text = repr(model) + repr(tuple(int(s) for s in input_shape)) + repr(sorted(layers))
    return "model:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def latency_plan(model: nn.Module, candidates: Any, policy: LatencyBudget,
                 example_inputs: Inputs | Sequence[int]) -> LatencyPlan:
    """Choose `(format, rank)` or dense per candidate conv / linear of `model` for `policy`'s
    target.

    `candidates`: layer names, `(name, module)` pairs, objects with `.name`/`.module` (what
    `decompose` selects), or None for every `nn.Conv2d` and `nn.Linear`; other candidates stay
    dense. `example_inputs`: the input shape without batch (images), or inputs as the model
    takes them — a tensor `(B, …)`, a tuple of positional tensors, keyword tensors such as a
    tokenizer's output, or `(args, kwargs)` with one of them empty; each layer is timed at the
    input it sees there (a linear at its rows per sample), at `policy.batch`. Measures missing
    table entries when `policy.measure`.
    """
    if policy.measure:
        warn_if_emulated(policy.precision, "cpu", PLAN_FIX)
    pairs = candidate_layers(model, candidates)
    mods = {n: m for n, m in pairs if isinstance(m, (nn.Conv2d, nn.Linear))}
    shape, example, seen = layer_inputs(model, example_inputs, mods)
    align = policy.align or default_align(policy.precision)
    table = policy.table if policy.table is not None else LatencyTable.load(policy.key(),
                                                                            policy.cache_dir)
    layers: dict[str, tuple[LayerSpec, Pair, list[Option]]] = {}
    for name, mod in mods.items():
        if name in seen:
            spec, hw = dense_spec_of(mod), extent(mod, seen[name])
            layers[name] = (spec, hw, layer_options(spec, hw, policy.formats, align))
    if policy.measure:
        fill_table(table, layers)

    def ms(spec: LayerSpec, hw: Pair, o: Option) -> tuple[float, str]:
        v = table.get(layer_key(spec, hw), o)
        if v is not None:
            return v, "measured"
        return analytic_ms(spec, hw, o, policy.precision, policy.batch), "analytic"

    names, opts, info = list(layers), [], []
    for name in names:
        spec, hw, options = layers[name]
        w = mods[name].weight.detach().float()
        spectra = {f: FORMATS[f].spectra(w, spec) for f in {o[0] for o in options[1:]}}
        row = [(ms(spec, hw, o), 1.0 if o == DENSE else retained_energy(spectra[o[0]], o[1]))
               for o in options]
        opts.append([(t, 1.0 - e) for (t, _), e in row])
        info.append([(src, e) for (_, src), e in row])
    dense_sum = sum(o[0][0] for o in opts)
    fixed = policy.fixed_ms
    if fixed is None:
        fp = model_fingerprint(model, shape, names)
        share = table.entries.get(fp, {}).get("fixed_share")
        if share is None and policy.measure:
            share = fixed_fraction(model, shape, names, policy.precision, policy.batch,
                                   policy.threads, policy.channels_last,
                                   policy.runtime == "onnxruntime", example=example)
            table.entries[fp] = {"fixed_share": share}
            if table.path is not None:
                table.save()
        share = float(share or 0.0)
        fixed = share / (1.0 - share) * dense_sum
    dense_ms = fixed + dense_sum
    target = policy.target_ms if policy.target_ms is not None else policy.ratio * dense_ms
    sol = solve(opts, target, fixed, policy.min_gain)
    choices: dict[str, Choice] = {n: None for n, _ in pairs}
    rows = []
    for i, name in enumerate(names):
        fmt, rank = layers[name][2][sol.picks[i]]
        choices[name] = None if fmt == "dense" else (fmt, rank[0] if len(rank) == 1 else rank)
        rows.append({"name": name, "layer": layer_key(*layers[name][:2]), "format": fmt,
                     "rank": list(rank), "ms": opts[i][sol.picks[i]][0],
                     "dense_ms": opts[i][0][0], "energy": info[i][sol.picks[i]][1],
                     "source": info[i][sol.picks[i]][0]})
    if not sol.met:
        warnings.warn(f"{policy}: target {target:.3f} ms is out of reach; the fastest plan "
                      f"predicts {sol.total_ms:.3f} ms (dense {dense_ms:.3f} ms)",
                      LatencyTargetWarning, stacklevel=2)
    energy = sum(r["energy"] for r in rows) / len(rows) if rows else 1.0
    return LatencyPlan(choices, rows, dense_ms, fixed, target, sol.total_ms, sol.met, energy,
                       table.key.to_dict())


def allocate_latency(model: nn.Module, candidates: Any, policy: LatencyBudget,
                     example_inputs: torch.Tensor | Sequence[int]) -> dict[str, Choice]:
    """`{layer name: (format, rank) | None (keep dense)}` for `policy` (see `latency_plan`)."""
    return latency_plan(model, candidates, policy, example_inputs).choices


def apply_choices(model: nn.Module, choices: dict[str, Choice], inplace: bool = False
                  ) -> nn.Module:
    """`model` with each chosen layer replaced by `FORMATS[fmt].from_dense(layer, rank)`."""
    if not inplace:
        model = copy.deepcopy(model)
    for name, choice in choices.items():
        if choice is None:
            continue
        old = model.get_submodule(name)
        with torch.no_grad():
            new = FORMATS[choice[0]].from_dense(old, choice[1])
        new = new.to(device=old.weight.device, dtype=old.weight.dtype).train(old.training)
        model.set_submodule(name, new)
    return model


def mean_energy(model: nn.Module, choices: dict[str, Choice]) -> float:
    """Mean over `choices` of each layer's retained σ² fraction (dense = 1) in its format."""
    vals = []
    for name, choice in choices.items():
        if choice is None:
            vals.append(1.0)
            continue
        layer = model.get_submodule(name)
        spec, (fmt, rank) = dense_spec_of(layer), choice
        r = (rank,) if isinstance(rank, int) else tuple(rank)
        vals.append(retained_energy(FORMATS[fmt].spectra(layer.weight.detach().float(), spec), r))
    return sum(vals) / len(vals) if vals else 1.0


__all__ = ["Choice", "LatencyBudget", "LatencyPlan", "allocate_latency", "apply_choices",
           "latency_plan", "mean_energy", "model_fingerprint", "parse_latency_budget"]
