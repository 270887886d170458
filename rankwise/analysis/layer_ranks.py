"""Rank analysis of a model: per-layer singular spectra and how far each layer is from low rank.

Every `nn.Conv2d` / `nn.Linear` weight (and the dense weight of every factorized layer; its own
sub-layers are not listed again) is matricized — conv `W (n, c/g, kh, kw)` by the "channel"
scheme `(n, c·kh·kw)` or the "spatial" scheme `(n·kw, c·kh)`, a linear `W (out, in)` as is — and
its singular values are measured. A grouped conv is block-diagonal in either matricization, so
its spectrum is the union of the per-group spectra and its max rank the sum of theirs.

Measures per layer (`LayerRankStats`), all from `rankwise.linalg.spectra`:
- energy ranks: smallest r with `Σ_{i≤r} σ_i² / Σ σ_i² ≥ e` for e in `ENERGIES`;
- effective rank (Roy & Vetterli 2007) `exp(−Σ p_i log p_i)`, `p = σ / ‖σ‖₁`;
- stable rank `‖σ‖₂² / σ_max²`; numerical rank; max rank `min(p, q)` (summed over groups);
- distance from low rank: `erank_ratio = erank / max_rank` (0..1, 1 = flat spectrum) and
  `tail_energy` = fraction of σ² beyond the 0.9-energy rank (≤ 0.1 by construction; small means
  the 0.9 cut is sharp), next to `energy_rank_ratio` = r(0.9) / max_rank.
Pure functions, no plotting (see `rankwise.cli.analyze` for the figures).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rankwise.errors import ConfigError
from rankwise.layers.base import FactorizedLayer
from rankwise.linalg.grouped import matricize_groups
from rankwise.linalg.spectra import (
    effective_rank,
    energy_curve,
    energy_rank,
    numerical_rank,
    stable_rank,
)
from rankwise.linalg.svd import svdvals

ENERGIES: tuple[float, ...] = (0.8, 0.9, 0.95, 0.99)
SCHEMES = ("channel", "spatial")
TAIL_AT = 0.9


@dataclass
class LayerRankStats:
    """Rank measures of one layer's matricized weight.

    `spectrum`: singular values, descending, float64 CPU `(k,)`. `energy_ranks`: energy → rank.
    `kind`: "conv", "linear" or the factorized format name ("tucker2", ...).
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    matrix_shape: tuple[int, int]
    groups: int
    max_rank: int
    numerical_rank: int
    energy_ranks: dict[float, int]
    erank: float
    stable_rank: float
    tail_energy: float
    spectrum: torch.Tensor = field(repr=False)

    @property
    def erank_ratio(self) -> float:
        """`erank / max_rank` in (0, 1]: 1 = all singular values equal (far from low rank)."""
        return self.erank / self.max_rank

    @property
    def energy_rank_ratio(self) -> float:
        """`r(0.9 energy) / max_rank`."""
        r = self.energy_ranks.get(TAIL_AT)
        return (r if r is not None else energy_rank(self.spectrum, TAIL_AT)) / self.max_rank

    def normalized_spectrum(self) -> torch.Tensor:
        """`σ / σ_max` (all zeros for a zero weight), float64 `(k,)`."""
        top = float(self.spectrum[0]) if self.spectrum.numel() else 0.0
        return self.spectrum / top if top > 0 else torch.zeros_like(self.spectrum)

    def to_dict(self, with_spectrum: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name, "kind": self.kind, "weight_shape": list(self.weight_shape),
            "matrix_shape": list(self.matrix_shape), "groups": self.groups,
            "max_rank": self.max_rank, "numerical_rank": self.numerical_rank,
            "energy_ranks": {f"{e:g}": r for e, r in self.energy_ranks.items()},
            "erank": self.erank, "stable_rank": self.stable_rank,
            "erank_ratio": self.erank_ratio, "energy_rank_ratio": self.energy_rank_ratio,
            "tail_energy": self.tail_energy,
        }
        if with_spectrum:
            d["spectrum"] = [float(s) for s in self.spectrum]
        return d


def weight_spectrum(w: torch.Tensor, scheme: str = "channel", groups: int = 1) -> torch.Tensor:
    """Singular values (float64, descending, `(Σ_g min(p, q),)`) of a weight's matricization."""
    m = matricize_groups(w.detach().to(device="cpu", dtype=torch.float64), scheme, groups)
    s = svdvals(m).reshape(-1)
    return torch.sort(s, descending=True).values


def spectrum_stats(name: str, kind: str, w: torch.Tensor, scheme: str = "channel",
                   groups: int = 1, energies: tuple[float, ...] = ENERGIES) -> LayerRankStats:
    """All rank measures of weight `w` (see the module docstring). ConfigError naming the layer
    when `w` holds NaN/Inf (the SVD would fail or return garbage)."""
    if w.is_floating_point() and not bool(torch.isfinite(w.detach()).all()):
        raise ConfigError(f"{name}: weight contains NaN/Inf; analyze a finite checkpoint (the "
                          "run diverged or the file is damaged)")
    m_shape = matricize_groups(w.detach(), scheme, groups).shape
    s = weight_spectrum(w, scheme, groups)
    r_tail = energy_rank(s, TAIL_AT)
    curve = energy_curve(s)
    return LayerRankStats(
        name=name, kind=kind, weight_shape=tuple(int(x) for x in w.shape),
        matrix_shape=(int(m_shape[1]), int(m_shape[2])), groups=int(groups),
        max_rank=int(s.numel()),
        numerical_rank=numerical_rank(s.to(w.dtype) if w.is_floating_point() else s),
        energy_ranks={float(e): energy_rank(s, e) for e in energies},
        erank=effective_rank(s), stable_rank=stable_rank(s),
        tail_energy=max(0.0, 1.0 - float(curve[r_tail - 1])), spectrum=s,
    )


def analyzable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """`(name, module)` of conv/linear layers and outermost factorized layers, model order;
    layers inside a factorized layer are skipped (its dense weight stands for them)."""
    out: list[tuple[str, nn.Module]] = []
    inside: list[str] = []
    for name, mod in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(mod, FactorizedLayer):
            inside.append(name)
            out.append((name, mod))
        elif isinstance(mod, (nn.Conv2d, nn.Linear)):
            out.append((name, mod))
    return out


def analyze_model(model: nn.Module, scheme: str = "channel",
                  energies: tuple[float, ...] = ENERGIES) -> list[LayerRankStats]:
    """Rank measures of every conv/linear/factorized layer of `model`, in model order.

    `scheme`: "channel" `(n, c·kh·kw)` or "spatial" `(n·kw, c·kh)` for conv weights.
    Raises `ConfigError` for an unknown scheme or a model without such layers.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown matricization scheme {scheme!r}; choose one of {SCHEMES}")
    rows = []
    with torch.no_grad():
        for name, mod in analyzable_layers(model):
            if isinstance(mod, FactorizedLayer):
                w, kind = mod.dense_weight(), str(mod.format)
                groups = int(getattr(mod.dense_spec, "groups", 1))
            else:
                w = mod.weight
                kind = "conv" if isinstance(mod, nn.Conv2d) else "linear"
                groups = int(getattr(mod, "groups", 1))
            rows.append(spectrum_stats(name or "<root>", kind, w, scheme, groups, energies))
    if not rows:
        raise ConfigError(f"{type(model).__name__} has no nn.Conv2d / nn.Linear / factorized "
                          "layer to analyze")
    return rows


def summarize(stats: list[LayerRankStats]) -> dict[str, float]:
    """Model-level numbers: layer count, mean erank ratio, mean tail energy, and the
    max-rank-weighted erank ratio `Σ erank / Σ max_rank`."""
    n = len(stats)
    return {
        "layers": n,
        "mean_erank_ratio": sum(s.erank_ratio for s in stats) / n if n else 0.0,
        "weighted_erank_ratio": (sum(s.erank for s in stats) / sum(s.max_rank for s in stats)
                                 if n else 0.0),
        "mean_energy_rank_ratio": sum(s.energy_rank_ratio for s in stats) / n if n else 0.0,
        "mean_tail_energy": sum(s.tail_energy for s in stats) / n if n else 0.0,
    }


def to_markdown(stats: list[LayerRankStats], title: str = "Rank analysis",
                scheme: str = "channel") -> str:
    """A markdown report: one table row per layer plus the model summary."""
    energies = list(stats[0].energy_ranks) if stats else list(ENERGIES)
    head = ["layer", "kind", "matrix", "max rank", *[f"r@{e:g}" for e in energies], "erank",
            "stable", "erank/max", "tail>r@0.9"]
    lines = [f"# {title}", "", f"Matricization: **{scheme}**. Energy ranks count σ²; "
             "erank = exp(entropy of σ/‖σ‖₁); tail = σ² fraction beyond the 0.9-energy rank.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in stats:
        cells = [f"`{s.name}`", s.kind, f"{s.matrix_shape[0]}×{s.matrix_shape[1]}"
                 + (f" ×{s.groups}g" if s.groups > 1 else ""), str(s.max_rank),
                 *[str(s.energy_ranks[e]) for e in energies], f"{s.erank:.2f}",
                 f"{s.stable_rank:.2f}", f"{s.erank_ratio:.3f}", f"{s.tail_energy:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    summ = summarize(stats)
    lines += ["", "## Summary", ""]
    lines += [f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}"
              for k, v in summ.items()]
    return "\n".join(lines) + "\n"
