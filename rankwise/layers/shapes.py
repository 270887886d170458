"""Shape arithmetic for dense layers: constructor arguments, output sizes, params and MACs.

MACs are multiply-accumulates of the weights for **one sample** (batch 1); bias additions and
activations are not counted. These helpers sit under `layers` so that factorized layers and
`rankwise.analysis.profile` count the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from rankwise.errors import UnsupportedLayerError

Pair = tuple[int, int]


def _pair(v: int | tuple[int, ...]) -> Pair:
    if isinstance(v, int):
        return (v, v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v!r}")
    return (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class ConvSpec:
    """Constructor arguments of an `nn.Conv2d`, JSON-serialisable.

    `padding` is a pair of ints or one of the strings "same" / "valid" (PyTorch semantics).
    """

    in_channels: int
    out_channels: int
    kernel_size: Pair
    stride: Pair = (1, 1)
    padding: Pair | str = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> ConvSpec:
        if not isinstance(conv, nn.Conv2d):
            raise UnsupportedLayerError(
                f"expected nn.Conv2d, got {type(conv).__name__}; "
                "only 2-D convolutions are supported"
            )
        padding = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
        return cls(
            in_channels=conv.in_channels,
            out_channels=conv.out_channels,
            kernel_size=_pair(conv.kernel_size),
            stride=_pair(conv.stride),
            padding=padding,
            dilation=_pair(conv.dilation),
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("kernel_size", "stride", "dilation"):
            d[k] = list(d[k])
        if not isinstance(self.padding, str):
            d["padding"] = list(self.padding)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConvSpec:
        pad = d.get("padding", (0, 0))
        return cls(
            in_channels=int(d["in_channels"]),
            out_channels=int(d["out_channels"]),
            kernel_size=_pair(tuple(d["kernel_size"])),
            stride=_pair(tuple(d.get("stride", (1, 1)))),
            padding=pad if isinstance(pad, str) else _pair(tuple(pad)),
            dilation=_pair(tuple(d.get("dilation", (1, 1)))),
            groups=int(d.get("groups", 1)),
            bias=bool(d.get("bias", True)),
            padding_mode=str(d.get("padding_mode", "zeros")),
        )

    def make(self) -> nn.Conv2d:
        """A fresh `nn.Conv2d` with these arguments (default init)."""
        return nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias,
            padding_mode=self.padding_mode,
        )


@dataclass(frozen=True)
class LinearSpec:
    """Constructor arguments of an `nn.Linear`, JSON-serialisable."""

    in_features: int
    out_features: int
    bias: bool = True

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> LinearSpec:
        if not isinstance(layer, nn.Linear):
            raise UnsupportedLayerError(f"expected nn.Linear, got {type(layer).__name__}")
        return cls(layer.in_features, layer.out_features, layer.bias is not None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinearSpec:
        return cls(int(d["in_features"]), int(d["out_features"]), bool(d.get("bias", True)))

    def make(self) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias)


def conv2d_output_hw(spec: ConvSpec, input_hw: Pair) -> Pair:
    """Output (H, W) of a conv with `spec` on an input of spatial size `input_hw`."""
    if spec.padding == "same":
        return (int(input_hw[0]), int(input_hw[1]))
    pad = (0, 0) if spec.padding == "valid" else spec.padding
    out = []
    for i in range(2):
        eff_k = spec.dilation[i] * (spec.kernel_size[i] - 1) + 1
        out.append((input_hw[i] + 2 * pad[i] - eff_k) // spec.stride[i] + 1)
    return (out[0], out[1])


def conv2d_params(spec: ConvSpec) -> int:
    """Number of parameters (weight + bias) of a conv with `spec`."""
    kh, kw = spec.kernel_size
    w = spec.out_channels * (spec.in_channels // spec.groups) * kh * kw
    return w + (spec.out_channels if spec.bias else 0)


def conv2d_macs(spec: ConvSpec, input_hw: Pair) -> int:
    """MACs of one sample: out_h·out_w·out_channels·(in_channels/groups)·kh·kw."""
    oh, ow = conv2d_output_hw(spec, input_hw)
    kh, kw = spec.kernel_size
    return oh * ow * spec.out_channels * (spec.in_channels // spec.groups) * kh * kw


def linear_params(spec: LinearSpec) -> int:
    return spec.in_features * spec.out_features + (spec.out_features if spec.bias else 0)


def linear_macs(spec: LinearSpec, tokens: int = 1) -> int:
    """MACs for `tokens` input rows (1 for a plain classifier head)."""
    return tokens * spec.in_features * spec.out_features
