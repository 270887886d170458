"""Entropy coding of a `QuantizedState` to bytes on disk, and its accounting.

Codecs: "zstd" (zstandard, every tensor) and "ans" (int8 weights coded by rANS from the
`constriction` package under their own order-0 histogram, stored in the header; every other tensor
still zstd). "ans" needs `pip install constriction` (tested with 0.5.0); zstd is a dependency.

Blob layout (all integers little-endian):
    b"RWQSTATE"            8 bytes magic
    header_len  uint32     length of the (zstd-compressed) JSON header in bytes
    header_crc  uint32     zlib.crc32 of the compressed header bytes
    header      zstd frame of JSON utf-8 {"format", "version", "codec", "level", "entries": [...]}
                (compressed because names, shapes and ANS histograms repeat: on small models an
                uncompressed header cost more than entropy coding saved)
    payload                one coded block per tensor (a zstd frame or ANS words), back to back
Each entry: {"name", "group" ("qweight" | "scale" | "other"), "dtype", "shape", "offset",
"coded_nbytes", "raw_nbytes", "crc32" (of the raw bytes), "coded_crc32" (of the coded block),
"codec"}, plus "weight_dtype" for qweights and "ans_min" / "ans_counts" (histogram) for ANS blocks.
Tensors are stored as their raw little-endian bytes; nothing is pickled. Any corruption or
truncation is reported as `CheckpointError`.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import zstandard

from rankwise.compress.quantize import QuantizedState
from rankwise.errors import CheckpointError, ConfigError

MAGIC = b"RWQSTATE"
FORMAT_VERSION = 2
_PREFIX = struct.Struct("<8sII")
_GROUPS = ("qweight", "scale", "other")
CODECS = ("zstd", "ans")
_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool,
              torch.float16, torch.bfloat16, torch.float32, torch.float64)
}


def _raw_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if sys.byteorder != "little":  # pragma: no cover - all supported platforms are little-endian
        raise CheckpointError("entropy coding assumes a little-endian machine")
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _from_raw(raw: bytes, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    if not raw:
        return torch.empty(shape, dtype=dtype)
    flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return flat.view(dtype).reshape(shape).clone()


def _check_level(level: int) -> None:
    if not 1 <= int(level) <= 22:
        raise ConfigError(f"zstd level must be in 1..22, got {level}")


def _ans_encode(q: torch.Tensor) -> tuple[bytes, dict[str, Any]]:
    """rANS-code int8 `q` under its own histogram. Returns (bytes, header fields)."""
    vals = q.detach().cpu().reshape(-1).to(torch.int32).numpy()
    lo = int(vals.min()) if vals.size else 0
    sym = vals - lo
    counts = np.bincount(sym, minlength=1) if vals.size else np.zeros(1, dtype=np.int64)
    meta = {"ans_min": lo, "ans_counts": [int(c) for c in counts]}
    if counts.size == 1:  # a single symbol (or empty): the histogram says it all
        return b"", meta
    coder = _constriction().stream.stack.AnsCoder()
    coder.encode_reverse(sym.astype(np.int32), _ans_model(counts))
    return coder.get_compressed().astype("<u4").tobytes(), meta


def _ans_decode(coded: bytes, e: dict[str, Any], numel: int) -> bytes:
    counts = np.asarray([int(c) for c in e["ans_counts"]], dtype=np.int64)
    lo = int(e["ans_min"])
    if (int(counts.sum()) != numel or (counts < 0).any() or counts.size > 256
            or not -128 <= lo <= 127):
        raise ValueError("ANS histogram does not match the tensor size")
    if counts.size == 1:
        sym = np.zeros(numel, dtype=np.int32)
    else:
        if len(coded) % 4:
            raise ValueError("ANS block is not a whole number of 32-bit words")
        words = np.frombuffer(coded, dtype="<u4").astype(np.uint32)
        sym = _constriction().stream.stack.AnsCoder(words).decode(_ans_model(counts), numel)
    vals = sym.astype(np.int64) + lo
    if vals.size and (vals.min() < -128 or vals.max() > 127):
        raise ValueError("ANS symbols out of int8 range")
    return vals.astype(np.int8).tobytes()


def _ans_model(counts: Any) -> Any:
    probs = counts.astype("float64") / float(counts.sum())
    return _constriction().stream.model.Categorical(probs, perfect=False)


def _constriction() -> Any:
    try:
        import constriction
    except ModuleNotFoundError as e:
        raise ConfigError(
            "codec 'ans' needs the constriction package: pip install constriction "
            "(or use codec='zstd')"
        ) from e
    return constriction


def encode_state(state: QuantizedState, level: int = 19, codec: str = "zstd") -> bytes:
    """Serialize and compress `state`, each tensor its own block.

    codec="zstd": zstd at `level` (1..22) for every tensor. codec="ans": int8 weights by rANS
    under their order-0 histogram, the rest zstd at `level`.
    """
    _check_level(level)
    if codec not in CODECS:
        raise ConfigError(f"unknown codec {codec!r}; choose one of {CODECS}")
    cctx = zstandard.ZstdCompressor(level=int(level), write_checksum=True, write_content_size=True)
    entries, blocks, offset = [], [], 0
    for group in _GROUPS:
        for name, t in getattr(state, group).items():
            dname = str(t.dtype).removeprefix("torch.")
            if dname not in _DTYPES:
                raise ConfigError(f"tensor {name!r} has unsupported dtype {t.dtype}")
            raw = _raw_bytes(t)
            extra: dict[str, Any] = {"codec": "zstd"}
            if codec == "ans" and t.dtype == torch.int8:
                block, meta = _ans_encode(t)
                extra = {"codec": "ans", **meta}
            else:
                block = cctx.compress(raw)
            entry: dict[str, Any] = {
                "name": name, "group": group, "dtype": dname, "shape": list(t.shape),
                "offset": offset, "coded_nbytes": len(block), "raw_nbytes": len(raw),
                "crc32": zlib.crc32(raw), "coded_crc32": zlib.crc32(block), **extra,
            }
            if group == "qweight":
                entry["weight_dtype"] = state.weight_dtype.get(name, "float32")
            entries.append(entry)
            blocks.append(block)
            offset += len(block)
    header = json.dumps(
        {"format": "rankwise-quantized-state", "version": FORMAT_VERSION, "codec": codec,
         "level": int(level), "entries": entries},
        separators=(",", ":"),
    ).encode("utf-8")
    header = zstandard.ZstdCompressor(level=19).compress(header)
    return _PREFIX.pack(MAGIC, len(header), zlib.crc32(header)) + header + b"".join(blocks)


def read_header(blob: bytes) -> dict[str, Any]:
    """The validated JSON header of an `encode_state` blob (no decompression)."""
    if len(blob) < _PREFIX.size:
        raise CheckpointError(
            f"quantized-state blob is {len(blob)} bytes, shorter than its {_PREFIX.size}-byte "
            "prefix; the file is truncated — re-encode it"
        )
    magic, hlen, hcrc = _PREFIX.unpack_from(blob, 0)
    if magic != MAGIC:
        raise CheckpointError(f"not a rankwise quantized-state blob (magic {magic!r})")
    start = _PREFIX.size
    if start + hlen > len(blob):
        raise CheckpointError("quantized-state blob truncated inside its header; re-encode it")
    hbytes = bytes(blob[start:start + hlen])
    if zlib.crc32(hbytes) != hcrc:
        raise CheckpointError("quantized-state header checksum mismatch; the blob is corrupt")
    try:
        header = json.loads(zstandard.ZstdDecompressor().decompress(hbytes).decode("utf-8"))
        entries = header["entries"]
        if header["format"] != "rankwise-quantized-state" or header["codec"] not in CODECS:
            raise ValueError(f"unknown format/codec {header['format']!r}/{header['codec']!r}")
        if header["version"] > FORMAT_VERSION:
            raise ValueError(f"version {header['version']} is newer than {FORMAT_VERSION}")
        total = sum(int(e["coded_nbytes"]) for e in entries)
    except (ValueError, KeyError, TypeError, zstandard.ZstdError) as e:
        raise CheckpointError(f"invalid quantized-state header: {e}") from e
    if start + hlen + total != len(blob):
        raise CheckpointError(
            f"quantized-state blob has {len(blob) - start - hlen} payload bytes, header lists "
            f"{total}; the file is truncated or has trailing data — re-encode it"
        )
    header["payload_start"] = start + hlen
    return header


def decode_state(blob: bytes) -> QuantizedState:
    """Inverse of `encode_state`, bit-exact. Raises `CheckpointError` on any inconsistency."""
    header = read_header(blob)
    base = header["payload_start"]
    dctx = zstandard.ZstdDecompressor()
    state = QuantizedState()
    for e in header["entries"]:
        name = e.get("name", "?")
        try:
            group, dtype, shape = e["group"], _DTYPES[e["dtype"]], [int(s) for s in e["shape"]]
            if group not in _GROUPS:
                raise ValueError(f"unknown group {group!r}")
            lo = base + int(e["offset"])
            block = bytes(blob[lo:lo + int(e["coded_nbytes"])])
            if zlib.crc32(block) != int(e["coded_crc32"]):
                raise ValueError("coded-bytes checksum mismatch")
            if e.get("codec", "zstd") == "ans":
                if dtype != torch.int8:
                    raise ValueError("ANS blocks must hold int8 tensors")
                raw = _ans_decode(block, e, math.prod(shape))
            elif block:
                raw = dctx.decompress(block, max_output_size=int(e["raw_nbytes"]))
            else:
                raw = b""
            if len(raw) != int(e["raw_nbytes"]) or zlib.crc32(raw) != int(e["crc32"]):
                raise ValueError("size or checksum mismatch")
            if math.prod(shape) * dtype.itemsize != len(raw):
                raise ValueError(f"shape {shape} × {dtype} does not match {len(raw)} bytes")
            t = _from_raw(raw, dtype, shape)
        except (zstandard.ZstdError, ValueError, KeyError, TypeError, RuntimeError,
                OverflowError) as err:
            raise CheckpointError(
                f"tensor {name!r} of the quantized-state blob is corrupt: {err}; re-encode it"
            ) from err
        getattr(state, group)[name] = t
        if group == "qweight":
            state.weight_dtype[name] = str(e.get("weight_dtype", "float32"))
    return state


def shannon_entropy(t: torch.Tensor) -> float:
    """Empirical order-0 Shannon entropy of the values of `t`, in bits per element.

    `-Σ p_v log2 p_v` over the value histogram: the lower bound for any coder that treats the
    elements as independent draws from that histogram (context-modelling coders such as zstd's
    LZ stage may go below it on structured data). 0 for constant or empty tensors.
    """
    if t.numel() == 0:
        return 0.0
    _, counts = torch.unique(t.detach().cpu().reshape(-1), return_counts=True)
    p = counts.to(torch.float64) / t.numel()
    return float(-(p * torch.log2(p)).sum())


@dataclass(frozen=True)
class CodingRow:
    """One tensor: `numel` elements, `raw_nbytes` → `coded_nbytes`; bits per element achieved and
    the order-0 entropy bound."""

    name: str
    group: str
    numel: int
    raw_nbytes: int
    coded_nbytes: int
    bits_per_element: float
    entropy_bits: float


@dataclass
class CodingReport:
    """Per-tensor coding results plus totals; `blob_nbytes` is the whole file incl. header."""

    rows: list[CodingRow] = field(default_factory=list)
    blob_nbytes: int = 0
    level: int = 19
    codec: str = "zstd"

    @property
    def raw_nbytes(self) -> int:
        return sum(r.raw_nbytes for r in self.rows)

    @property
    def qweight_bits_per_weight(self) -> float:
        """Coded bits per quantized weight (int8 weights only, scales/others excluded)."""
        rows = [r for r in self.rows if r.group == "qweight"]
        n = sum(r.numel for r in rows)
        return 8.0 * sum(r.coded_nbytes for r in rows) / n if n else 0.0

    @property
    def qweight_entropy_bits(self) -> float:
        """Numel-weighted mean of the per-tensor order-0 entropies of the int8 weights."""
        rows = [r for r in self.rows if r.group == "qweight"]
        n = sum(r.numel for r in rows)
        return sum(r.entropy_bits * r.numel for r in rows) / n if n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "blob_nbytes": self.blob_nbytes, "raw_nbytes": self.raw_nbytes, "level": self.level,
            "codec": self.codec,
            "qweight_bits_per_weight": self.qweight_bits_per_weight,
            "qweight_entropy_bits": self.qweight_entropy_bits,
            "tensors": [asdict(r) for r in self.rows],
        }


def coding_report(state: QuantizedState, level: int = 19, codec: str = "zstd") -> CodingReport:
    """Encode `state` and report, per tensor, achieved bits/element next to its order-0 entropy.

    Per-tensor `coded_nbytes` counts the coded block only; the header (names, shapes, ANS
    histograms) is counted once, in `blob_nbytes`.
    """
    blob = encode_state(state, level, codec)
    header = read_header(blob)
    rows = []
    for e in header["entries"]:
        t = getattr(state, e["group"])[e["name"]]
        n = t.numel()
        rows.append(CodingRow(
            name=e["name"], group=e["group"], numel=n, raw_nbytes=e["raw_nbytes"],
            coded_nbytes=e["coded_nbytes"],
            bits_per_element=8.0 * e["coded_nbytes"] / n if n else 0.0,
            entropy_bits=shannon_entropy(t),
        ))
    return CodingReport(rows, len(blob), int(level), codec)
