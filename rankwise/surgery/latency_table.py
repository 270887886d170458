"""A per-machine table of measured layer latencies, cached on disk the way autotuners cache kernels.

Entries are keyed by *layer* (conv arguments + input H×W: ResNet-50 has ~25 distinct ones; linear
features + rows per sample) and *option* (`"dense"`, `"channel:32"`, `"spatial:48"`,
`"tucker2:32,16"`, `"svd:64"`); the value is the median
milliseconds of one forward pass of that layer at the table's batch size. A table belongs to one
`TableKey` — CPU model and kernel flags, torch's CPU dispatch level, torch version, precision,
threads, batch, memory format, and the runtime (eager PyTorch, or ONNX Runtime and its
version) — and lives in `cache_dir/<sha of the key>.json`; a file whose
stored key differs from the one asked for is ignored (and rewritten on the next save), so a new
torch, another CPU or another thread count never reuses stale timings.

`analytic_ms` is the fallback for entries that are not measured: a roofline-style sum over the
sub-layers of `max(MACs / peak, bytes moved / bandwidth) + per-op overhead`.

A layer's *extent* is what besides its arguments sets its cost: the input `(H, W)` of a conv,
`(tokens, 1)` for a linear (rows per sample: 1 for a classifier head, the sequence length in a
transformer).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rankwise.errors import ConfigError
from rankwise.io.atomic import atomic_write
from rankwise.io.export_precision import check_precision, cpu_flags, cpu_model
from rankwise.layers.shapes import ConvSpec, LinearSpec, Pair, conv2d_macs, conv2d_output_hw

LayerSpec = ConvSpec | LinearSpec

SCHEMA = 2
Option = tuple[str, tuple[int, ...]]  # ("dense", ()) or (format, rank tuple)
DENSE: Option = ("dense", ())


def default_cache_dir() -> Path:
    """`$RANKWISE_CACHE/latency` or `~/.cache/rankwise/latency`."""
    root = os.environ.get("RANKWISE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "rankwise") / "latency"


@dataclass(frozen=True)
class TableKey:
    """Everything a measured latency depends on besides the layer and the option."""

    precision: str
    threads: int
    batch: int
    channels_last: bool
    cpu: str = ""
    flags: tuple[str, ...] = ()
    capability: str = ""
    torch: str = ""
    schema: int = SCHEMA
    runtime: str = "torch"  # or "onnxruntime <version>": the layers run as ONNX graphs

    @classmethod
    def here(cls, precision: str, threads: int, batch: int,
             channels_last: bool, runtime: str = "torch") -> TableKey:
        """The key of this machine and torch build (and ONNX Runtime version, for that runtime)
        for the given measurement settings."""
        if runtime != "torch":
            from rankwise.io.onnx_file import onnxruntime

            runtime = f"onnxruntime {onnxruntime().__version__}"
        return cls(check_precision(precision), int(threads), int(batch), bool(channels_last),
                   cpu_model(), tuple(cpu_flags()), torch.backends.cpu.get_cpu_capability(),
                   torch.__version__, runtime=runtime)

    @property
    def onnx(self) -> bool:
        """Whether the table times ONNX Runtime sessions instead of eager PyTorch."""
        return self.runtime != "torch"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flags"] = list(self.flags)
        if not self.onnx:
            del d["runtime"]  # eager tables keep the keys (and cache files) they had
        return d

    def digest(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def layer_key(spec: LayerSpec, input_hw: Pair) -> str:
    """`"c64-n64-k3x3-s1x1-p1x1-d1x1-g1-b0@56x56"`: one conv's arguments and its input size;
    `"lin-i768-o3072-b1@t128"`: a linear's and its rows per sample (`input_hw = (tokens, 1)`)."""
    if isinstance(spec, LinearSpec):
        return (f"lin-i{spec.in_features}-o{spec.out_features}-b{int(spec.bias)}"
                f"@t{int(input_hw[0])}")
    pad = spec.padding if isinstance(spec.padding, str) else "x".join(map(str, spec.padding))
    return (f"c{spec.in_channels}-n{spec.out_channels}-k{spec.kernel_size[0]}x"
            f"{spec.kernel_size[1]}-s{spec.stride[0]}x{spec.stride[1]}-p{pad}-d{spec.dilation[0]}"
            f"x{spec.dilation[1]}-g{spec.groups}-b{int(spec.bias)}-{spec.padding_mode}"
            f"@{int(input_hw[0])}x{int(input_hw[1])}")


def option_key(option: Option) -> str:
    """`"dense"` or `"tucker2:32,16"`."""
    fmt, rank = option
    return "dense" if fmt == "dense" else f"{fmt}:{','.join(str(int(r)) for r in rank)}"


class LatencyTable:
    """`{layer key: {option key: ms}}` for one `TableKey`; `load` / `save` use the disk cache."""

    def __init__(self, key: TableKey, entries: dict[str, dict[str, float]] | None = None,
                 path: Path | None = None) -> None:
        self.key = key
        self.entries: dict[str, dict[str, float]] = {k: dict(v) for k, v in (entries or {}).items()}
        self.path = path

    @classmethod
    def load(cls, key: TableKey, cache_dir: str | os.PathLike[str] | None = None) -> LatencyTable:
        """The cached table for `key`, or an empty one (missing file, other key, corrupt JSON)."""
        path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        file = path / f"{key.digest()}.json"
        try:
            data = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return cls(key, path=file)
        if not isinstance(data, dict) or data.get("key") != key.to_dict():
            return cls(key, path=file)  # stale: other machine / torch / settings
        entries = data.get("entries", {})
        ok = isinstance(entries, dict) and all(isinstance(v, dict) for v in entries.values())
        return cls(key, entries if ok else {}, path=file)

    def save(self) -> Path:
        """Write the table atomically to its cache file; returns the path."""
        if self.path is None:
            raise ConfigError("this LatencyTable has no cache file: build it with "
                              "LatencyTable.load(key, cache_dir) to save it")
        text = json.dumps({"key": self.key.to_dict(), "entries": self.entries}, indent=1,
                          sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, text.encode())
        return self.path

    def get(self, layer: str, option: Option) -> float | None:
        """Measured ms of `option` on `layer`, or None."""
        v = self.entries.get(layer, {}).get(option_key(option))
        return None if v is None else float(v)

    def put(self, layer: str, option: Option, ms: float) -> None:
        self.entries.setdefault(layer, {})[option_key(option)] = float(ms)

    def missing(self, layer: str, options: Sequence[Option]) -> list[Option]:
        """The options of `layer` (dense included if listed) without a measurement."""
        return [o for o in options if self.get(layer, o) is None]


# ----- analytic fallback ---------------------------------------------------------------------

# Rough single-core figures for an AVX-512 server core (MACs/s, bytes/s, s per op); the
# allocator only needs their ratios to be right, and measured entries replace them.
PEAK_MACS = {"fp32": 40e9, "bf16": 100e9}
BANDWIDTH = 12e9
OVERHEAD_S = 8e-6


def sub_layers(spec: LayerSpec, option: Option) -> list[LayerSpec]:
    """The conv(s) or linear(s) `option` runs for the dense layer `spec`, in order."""
    if isinstance(spec, LinearSpec):
        if option[0] == "dense":
            return [spec]
        if option[0] == "svd":
            r = int(option[1][0])
            return [LinearSpec(spec.in_features, r, bias=False),
                    LinearSpec(r, spec.out_features, bias=spec.bias)]
        raise ConfigError(f"latency table: format {option[0]!r} has no latency model for a "
                          "linear; use dense or svd")
    from rankwise.layers.channel_conv import channel_factor_specs
    from rankwise.layers.spatial_conv import spatial_factor_specs
    from rankwise.layers.tucker2_conv import Tucker2Conv2d

    fmt, rank = option
    if fmt == "dense":
        return [spec]
    if fmt == "channel":
        return list(channel_factor_specs(spec, int(rank[0])))
    if fmt == "spatial":
        return list(spatial_factor_specs(spec, int(rank[0])))
    if fmt == "tucker2":
        return Tucker2Conv2d.sub_specs(spec, (int(rank[0]), int(rank[1])))
    raise ConfigError(f"latency table: format {fmt!r} has no latency model; use dense, channel, "
                      "spatial or tucker2")


def analytic_ms(spec: LayerSpec, input_hw: Pair, option: Option, precision: str,
                batch: int) -> float:
    """Estimated ms of `option` at `batch`: Σ_sub-layers max(MACs/peak, bytes/bandwidth) + op.

    Bytes = input + output activations + weights (2 B each in bf16, 4 B in fp32).
    """
    p = check_precision(precision)
    act = 2 if p == "bf16" else 4
    total, hw = 0.0, (int(input_hw[0]), int(input_hw[1]))
    for s in sub_layers(spec, option):
        if isinstance(s, LinearSpec):
            rows = batch * hw[0]
            moved = act * (rows * (s.in_features + s.out_features) + s.in_features
                           * s.out_features)
            total += max(rows * s.in_features * s.out_features / PEAK_MACS[p],
                         moved / BANDWIDTH) + OVERHEAD_S
            continue
        out_hw = conv2d_output_hw(s, hw)
        macs = batch * conv2d_macs(s, hw)
        moved = batch * act * (s.in_channels * hw[0] * hw[1] + s.out_channels * out_hw[0]
                               * out_hw[1])
        moved += act * s.out_channels * (s.in_channels // s.groups) * s.kernel_size[0] \
            * s.kernel_size[1]
        total += max(macs / PEAK_MACS[p], moved / BANDWIDTH) + OVERHEAD_S
        hw = out_hw
    return 1e3 * total


__all__ = ["DENSE", "LatencyTable", "LayerSpec", "Option", "TableKey", "analytic_ms",
           "default_cache_dir", "layer_key", "option_key", "sub_layers"]
