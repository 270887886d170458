"""The precision a training runs in: `"auto"` is bfloat16 autocast only where the device
computes bfloat16 natively, else float32.

On a CPU without bfloat16 instructions oneDNN emulates them, and bf16 autocast is far slower
than float32: a CIFAR ResNet-20 training step (batch 128, 1 thread, channels-last) took 8.0 s
under bf16 autocast and 0.6 s in fp32 on an AMD EPYC with AVX2 only, while on an EPYC with
AVX-512-bf16 the bf16 step is about twice as fast as fp32. Native means: x86 `avx512_bf16` or
`amx_bf16`, Arm `bf16` (the flags /proc/cpuinfo lists; where it cannot be read, oneDNN's own
check), or a CUDA device with bf16 support.
"""

from __future__ import annotations

import warnings

import torch

from rankwise.errors import EmulatedPrecisionWarning
from rankwise.io.export_precision import cpu_flag_set as _cpu_flags

TRAIN_PRECISIONS = ("fp32", "bf16", "auto")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
"""CPU flags of native bfloat16 arithmetic: x86 `flags`, Arm `Features` in /proc/cpuinfo."""


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether `device` computes bfloat16 in hardware (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    flags = _cpu_flags()
    if flags is None:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return any(f in flags for f in BF16_CPU_FLAGS)


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """`precision` with `"auto"` replaced by `"bf16"` where `native_bf16(device)`, else
    `"fp32"`; "fp32" and "bf16" are returned as given."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


TRAIN_FIX = "use --precision auto or fp32"


def emulated_bf16(precision: str, device: torch.device | str, fix: str = TRAIN_FIX
                  ) -> str | None:
    """A one-line warning ending in `fix` when `precision` is bf16 on a CPU that only emulates
    it, else None."""
    device = torch.device(device)
    if precision != "bf16" or device.type != "cpu" or native_bf16(device):
        return None
    return ("precision bf16: this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16 or "
            "Arm bf16), so bf16 is emulated and runs several times slower than fp32 (a "
            f"ResNet-20 training step: 8.0 s against 0.6 s on an AVX2 CPU); {fix}")


def warn_if_emulated(precision: str, device: torch.device | str, fix: str = TRAIN_FIX) -> None:
    """Raise `emulated_bf16`'s warning as an `EmulatedPrecisionWarning` pointing at the caller's
    caller (a no-op unless `precision` is bf16 on a CPU that emulates it)."""
    if slow := emulated_bf16(precision, device, fix):
        warnings.warn(slow, EmulatedPrecisionWarning, stacklevel=3)


__all__ = ["BF16_CPU_FLAGS", "TRAIN_FIX", "TRAIN_PRECISIONS", "emulated_bf16", "native_bf16",
           "resolve_precision", "warn_if_emulated"]
