"""Shared helpers for the factorized-layer tests: independent counters and hypothesis strategies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def hook_macs(module: nn.Module, x: torch.Tensor) -> int:
    """Weight MACs of one sample, counted from the actual output shapes of every conv/linear leaf.

    Conv: `out.numel()/B · (in/groups)·kh·kw`; linear: `out.numel()/B · in_features`. Independent of
    `rankwise.layers.shapes`.
    """
    total = 0

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        per_sample = out.numel() // x.shape[0]
        if isinstance(m, nn.Conv2d):
            kh, kw = m.weight.shape[2:]
            total += per_sample * (m.in_channels // m.groups) * kh * kw
        else:
            total += per_sample * m.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return total


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """`‖a − b‖ / ‖b‖` (in float64)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def json_round_trip(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d))


@dataclass(frozen=True)
class ConvCase:
    """One dense conv configuration plus an input size valid for it (and for its padding mode)."""

    kwargs: dict[str, Any]
    input_hw: tuple[int, int]

    def make(self, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Conv2d:
        torch.manual_seed(seed)
        conv = nn.Conv2d(**self.kwargs).to(dtype)
        if conv.bias is not None:  # default bias init is tiny; make it visible in the output
            with torch.no_grad():
                conv.bias.normal_()
        return conv

    def input(self, batch: int = 2, dtype: torch.dtype = torch.float64, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        c = self.kwargs["in_channels"]
        return torch.randn(batch, c, *self.input_hw, generator=g, dtype=dtype)


@st.composite
def conv_cases(draw: st.DrawFn) -> ConvCase:
    """Small convs over channels, groups, non-square kernels 1..5, stride, every padding form,
    dilation, bias and padding mode."""
    g = draw(st.integers(1, 3))
    c, n = g * draw(st.integers(1, 3)), g * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kind = draw(st.sampled_from(["int", "tuple", "same", "valid"]))
    padding: Any
    if kind == "int":
        padding = draw(st.integers(0, 2))
    elif kind == "tuple":
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    else:
        padding = kind
    stride: Any = 1 if kind == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    eff_h, eff_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    # at least the effective kernel (valid output >= 1) and > any pad (reflect needs pad < size)
    h = draw(st.integers(max(eff_h, 3), max(eff_h, 3) + 3))
    w = draw(st.integers(max(eff_w, 3), max(eff_w, 3) + 3))
    kwargs = {
        "in_channels": c, "out_channels": n, "kernel_size": (kh, kw), "stride": stride,
        "padding": padding, "dilation": (dh, dw), "groups": g, "bias": draw(st.booleans()),
        "padding_mode": draw(st.sampled_from(PADDING_MODES)),
    }
    return ConvCase(kwargs, (h, w))


# Explicit configurations every conv format must get exactly right at full rank.
EXPLICIT_CASES = [
    ConvCase(dict(in_channels=4, out_channels=6, kernel_size=3, padding=1), (8, 8)),
    ConvCase(dict(in_channels=4, out_channels=6, kernel_size=(2, 5), stride=(2, 1),
                  padding=(1, 2), dilation=(2, 1), bias=False), (9, 11)),
    ConvCase(dict(in_channels=3, out_channels=5, kernel_size=(4, 2), padding="same"), (7, 6)),
    ConvCase(dict(in_channels=3, out_channels=5, kernel_size=3, padding="valid",
                  stride=2), (9, 8)),
    ConvCase(dict(in_channels=6, out_channels=9, kernel_size=(3, 4), padding=(2, 1),
                  groups=3), (8, 7)),
    ConvCase(dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4), (6, 6)),
    ConvCase(dict(in_channels=5, out_channels=7, kernel_size=1, stride=2), (7, 7)),
    *[
        ConvCase(dict(in_channels=4, out_channels=6, kernel_size=(3, 5), padding=(1, 2),
                      stride=(1, 2), dilation=(1, 2), padding_mode=mode), (9, 10))
        for mode in ("reflect", "replicate", "circular")
    ],
    *[
        ConvCase(dict(in_channels=4, out_channels=4, kernel_size=(4, 2), padding="same",
                      dilation=(1, 2), groups=2, padding_mode=mode), (8, 9))
        for mode in ("reflect", "replicate", "circular")
    ],
]


def case_id(case: ConvCase) -> str:
    k = case.kwargs
    return (
        f"{k['in_channels']}-{k['out_channels']}-k{k['kernel_size']}-p{k.get('padding', 0)}-"
        f"s{k.get('stride', 1)}-g{k.get('groups', 1)}-{k.get('padding_mode', 'zeros')}"
    ).replace(" ", "")
