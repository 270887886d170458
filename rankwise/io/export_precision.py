"""Deploying (factorized) models in the precision their speed was measured in, on CPU.

Precision modes (every speed number rankwise reports names one and compares against the dense
model deployed the same way):
- `"fp32"`: float32 weights and activations.
- `"bf16"`: bfloat16 weights and activations (oneDNN bf16 kernels: AVX512-BF16, or AMX where the
  CPU has it); outputs returned as float32. Measured on ResNet-50 (224², batch 8, one Zen-5
  core, BN folded): 0.90× the time of bf16 autocast over float32 weights, which re-casts every
  weight on every call.

`to_deploy` also folds each eval-mode `BatchNorm2d` into the conv that feeds it (found with
`torch.fx`; inside a factorized layer that is its last sub-conv, which gains a bias):
`W' = W·γ/√(var+ε)`, `b' = (b − mean)·γ/√(var+ε) + β`, and uses channels_last (NHWC), which is
what oneDNN's CPU convs run natively (a lone NCHW conv reorders on every call: 2× slower measured
for a 3×3 64→64 conv at 56², batch 8). `save_deploy` writes the ordinary model files
(`io.save`, float32, unfolded) plus the deployment settings in `meta["deploy"]`; `load_deploy`
rebuilds and deploys, so a reload runs exactly what was measured.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from rankwise.errors import CheckpointError, ConfigError
from rankwise.nested import map_tensors

PRECISIONS = ("fp32", "bf16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# CPU flags that decide which kernels oneDNN picks (lscpu / /proc/cpuinfo names).
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")


def check_precision(precision: str) -> str:
    """`precision` lower-cased if known, else `ConfigError` naming the choices."""
    p = str(precision).lower()
    if p not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is not supported; use one of {PRECISIONS}")
    return p


@contextlib.contextmanager
def precision_context(precision: str) -> Iterator[None]:
    """What a timed or deployed forward pass runs under: `torch.no_grad()` (weights and inputs
    already carry the precision; see `prepare_module` / `prepare_input`)."""
    check_precision(precision)
    with torch.no_grad():
        yield


def prepare_input(x: torch.Tensor, precision: str, channels_last: bool = True) -> torch.Tensor:
    """`x (B, C, H, W)` in the mode's dtype and memory format."""
    if x.is_floating_point():
        x = x.to(DTYPES[check_precision(precision)])
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def prepare_inputs(inputs: Any, precision: str, channels_last: bool = True) -> Any:
    """`prepare_input` on every tensor of `inputs` (a tensor, a tuple of positional inputs or
    keyword inputs); token ids and other integer tensors keep their dtype."""
    return map_tensors(lambda t: prepare_input(t, precision, channels_last), inputs)


def prepare_module(module: nn.Module, precision: str, channels_last: bool = True) -> nn.Module:
    """`module` (in place) cast to the mode's dtype, channels_last when asked, eval mode."""
    module.to(dtype=DTYPES[check_precision(precision)])
    if channels_last:
        module.to(memory_format=torch.channels_last)
    return module.eval()


def _folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
        1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, True, conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new.bias.copy_((b - bn.running_mean) * scale + shift)
    return new


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode `BatchNorm2d` fed only by an `nn.Conv2d` into that conv (in place;
    the BN becomes `nn.Identity`). Returns how many were folded; 0 if `model` cannot be traced
    by `torch.fx` (nothing is changed then)."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - untraceable models are deployed unfolded
        return 0
    mods = dict(model.named_modules())
    folded = 0
    for node in graph.nodes:
        bn = mods.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or bn.training or bn.running_var is None:
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        conv = mods.get(src.target)
        if type(conv) is not nn.Conv2d or sum(n.target == src.target for n in graph.nodes
                                              if n.op == "call_module") != 1:
            continue
        model.set_submodule(str(src.target), _folded_conv(conv, bn))
        model.set_submodule(str(node.target), nn.Identity())
        folded += 1
    return folded


class DeployedModel(nn.Module):
    """`model` deployed for inference: BN folded, weights in `precision`, channels_last.

    `forward(x)` takes float32 `(B, C, H, W)` and returns float32 outputs.
    """

    def __init__(self, model: nn.Module, precision: str, channels_last: bool,
                 folded: int) -> None:
        super().__init__()
        self.model = model
        self.precision = check_precision(precision)
        self.channels_last = bool(channels_last)
        self.folded = int(folded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with precision_context(self.precision):
            y = self.model(prepare_input(x, self.precision, self.channels_last))
        return y.float() if isinstance(y, torch.Tensor) else y

    def settings(self) -> dict[str, Any]:
        return {"precision": self.precision, "channels_last": self.channels_last,
                "fold_bn": self.folded > 0}


def to_deploy(model: nn.Module, precision: str = "bf16", channels_last: bool = True,
              fold_bn: bool = True) -> DeployedModel:
    """A deployed copy of `model` (eval mode): BN folded (`fold_bn`), weights cast to
    `precision`, channels_last; the caller's model is not modified."""
    m = copy.deepcopy(model).eval()
    folded = fold_batchnorm(m) if fold_bn else 0
    return DeployedModel(prepare_module(m, precision, channels_last), precision, channels_last,
                         folded)


def save_deploy(model: nn.Module, path: str | os.PathLike[str], precision: str = "bf16",
                channels_last: bool = True, fold_bn: bool = True, **save_kw: Any) -> Path:
    """`io.save(model, path, ...)` (float32, unfolded: loadable by `io.load` too) with the
    deployment settings in `meta["deploy"]`; `load_deploy` applies them."""
    from rankwise.io.model_file import save

    meta = dict(save_kw.pop("meta", None) or {})
    meta["deploy"] = {"precision": check_precision(precision),
                      "channels_last": bool(channels_last), "fold_bn": bool(fold_bn)}
    if isinstance(model, DeployedModel):
        raise ConfigError("save_deploy takes the float32 model, not a DeployedModel: pass the "
                          "model you gave to_deploy")
    return save(model, path, meta=meta, **save_kw)


def load_deploy(path: str | os.PathLike[str], model: nn.Module | None = None,
                precision: str | None = None) -> DeployedModel:
    """Load a model saved by `save_deploy` and deploy it with its saved settings (`precision`
    overrides the saved one)."""
    from rankwise.io.model_file import load, read_config

    settings = read_config(path).get("meta", {}).get("deploy")
    if not isinstance(settings, dict) and precision is None:
        raise CheckpointError(f"{Path(path) / 'model.json'} has no meta['deploy'] settings: save "
                              "it with save_deploy(..., precision=) or pass precision=")
    settings = dict(settings or {})
    return to_deploy(load(path, model=model), precision or settings.get("precision", "fp32"),
                     bool(settings.get("channels_last", True)),
                     bool(settings.get("fold_bn", True)))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (`"unknown"` elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return m.group(1).strip() if m else "unknown"


def cpu_flag_set() -> set[str] | None:
    """Every flag /proc/cpuinfo lists for the first CPU (x86 `flags`, Arm `Features`); None
    where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    m = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
    return set(m.group(1).split()) if m else None


def cpu_flags() -> list[str]:
    """The `KERNEL_FLAGS` this CPU reports (sorted), from /proc/cpuinfo."""
    have = cpu_flag_set() or set()
    return sorted(f for f in KERNEL_FLAGS if f in have)


def cpu_features() -> dict[str, Any]:
    """What the speed numbers depend on: CPU model, kernel flags, torch's dispatch level."""
    return {"cpu": cpu_model(), "flags": cpu_flags(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "bf16_kernels": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}


__all__ = ["DTYPES", "KERNEL_FLAGS", "PRECISIONS", "DeployedModel", "check_precision",
           "cpu_features", "cpu_flag_set", "cpu_flags", "cpu_model", "fold_batchnorm",
           "load_deploy", "precision_context", "prepare_input", "prepare_inputs",
           "prepare_module", "save_deploy", "to_deploy"]
