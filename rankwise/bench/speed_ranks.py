"""Ranks for the speed suite: the largest rank under a per-layer MACs cap, and the whole-model
MACs-budget factorization (`decompose` with `MacsBudget`; CP built fresh from the same allocation).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from rankwise.analysis.profile import count, trace_inputs
from rankwise.errors import RankError
from rankwise.layers import FORMATS
from rankwise.layers.base import Rank
from rankwise.layers.shapes import ConvSpec, Pair, conv2d_macs, conv2d_params
from rankwise.surgery.decompose import decompose
from rankwise.surgery.rank import BudgetCandidate, MacsBudget, allocate_budget, to_layer_rank

IMAGENET_MODELS = ("resnet18", "resnet50")
CIFAR_MODELS = ("resnet20", "resnet56")
CONV_FORMATS = ("channel", "spatial", "tucker2", "cp")
RATIOS = (2.0, 3.0, 4.0)
BATCHES = (1, 8)
LAYERS = ((64, 56), (128, 28), (256, 14), (512, 7))  # (channels, H=W): ResNet-18's 3×3 stages
CP_SUBSET = ("conv1", "layer1.*", "layer2.*")  # ResNet-50 convs whose CP-ALS is timed in full


@contextmanager
def threads_context(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ----- ranks -------------------------------------------------------------------------------


def rank_for_macs(fmt: str, spec: ConvSpec, hw: Pair, ratio: float) -> Rank:
    """Largest rank of `fmt` whose MACs on an `hw` input are ≤ dense MACs / `ratio`.

    Tucker-2 keeps `r_in / r_out ≈ c / n`. Raises `RankError` when even rank 1 is too costly.
    """
    cls = FORMATS[fmt]
    target = conv2d_macs(spec, hw) / ratio
    limit = cls.max_rank(spec)

    def rank_at(k: int) -> Rank:
        if len(limit) == 1:
            return k
        r_in = round(k * spec.in_channels / spec.out_channels)
        return (k, max(1, min(limit[1], r_in)))

    def fits(k: int) -> bool:
        return cls.cost(spec, rank_at(k), hw)[1] <= target

    if not fits(1):
        raise RankError(f"{fmt} at rank 1 already costs more than 1/{ratio} of the dense MACs of "
                        f"conv {spec.in_channels}→{spec.out_channels} {spec.kernel_size}; "
                        "use a smaller ratio")
    lo, hi = 1, limit[0]
    while lo < hi:  # cost grows with k: bisect for the last k that fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return rank_at(lo)


def _fresh_budget(model: nn.Module, fmt: str, ratio: float, shape: Sequence[int]
                  ) -> tuple[nn.Module, dict[str, Any]]:
    """MacsBudget allocation as in `decompose`, but layers built by `from_spec` (fresh weights)."""
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    seen = trace_inputs(model, shape, convs)
    cands, info = [], []
    for name, conv in convs.items():
        if name not in seen:
            continue
        spec = ConvSpec.from_conv(conv)
        f = "channel" if spec.kernel_size == (1, 1) else fmt
        hw = (seen[name][-2], seen[name][-1])
        cls = FORMATS[f]
        spectra = list(cls.spectra(conv.weight.detach(), spec))
        cands.append(BudgetCandidate(
            name, spectra, tuple(cls.max_rank(spec)), conv2d_macs(spec, hw),
            lambda r, cls=cls, spec=spec, hw=hw: cls.cost(spec, to_layer_rank(r), hw)[1]))
        info.append((name, spec, f, hw))
    _, _, total = count(model, shape)
    fixed = total - sum(c.dense_cost for c in cands)
    ranks = allocate_budget(cands, 1.0 / ratio, "macs", fixed_cost=max(0, fixed))
    out = copy.deepcopy(model)
    chosen: dict[str, Any] = {}
    for (name, spec, f, hw), r in zip(info, ranks, strict=True):
        rank = None if r is None else to_layer_rank(r)
        if rank is not None:
            params, macs = FORMATS[f].cost(spec, rank, hw)
            if params >= conv2d_params(spec) or macs >= conv2d_macs(spec, hw):
                rank = None  # same rule as decompose: a layer that does not save stays dense
        if rank is not None:
            out.set_submodule(name, FORMATS[f].from_spec(spec, rank).train(model.training))
        chosen[name] = list(rank) if isinstance(rank, tuple) else rank
    return out, chosen


def budget_factorize(model: nn.Module, fmt: str, ratio: float, shape: Sequence[int]
                     ) -> tuple[nn.Module, dict[str, Any], str]:
    """`model` cut to whole-model MACs ≈ dense/`ratio` in conv format `fmt` (fc kept dense).

    Returns (new model, {conv name: rank or None = dense}, how the weights were made).
    """
    if fmt == "cp":
        new, ranks = _fresh_budget(model, fmt, ratio, shape)
        return new, ranks, "from_spec (fresh; ranks by MacsBudget allocation, CP-ALS skipped)"
    new, rep = decompose(model, fmt, MacsBudget(1.0 / ratio), input_shape=tuple(shape),
                         linear_format=None)
    ranks = {r.name: list(r.rank) if isinstance(r.rank, tuple) else r.rank for r in rep.rows}
    return new, ranks, "decompose (from_dense)"



__all__ = ["BATCHES", "CIFAR_MODELS", "CONV_FORMATS", "CP_SUBSET", "IMAGENET_MODELS", "LAYERS",
           "RATIOS", "budget_factorize", "rank_for_macs", "threads_context"]
