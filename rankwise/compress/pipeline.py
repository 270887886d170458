"""The survey's compression pipeline: low-rank → pruning → int8 quantization → entropy coding.

`run_pipeline(model, cfg, input_shape, evaluate)` applies the configured stages in this fixed
order (each optional) and measures the model after every stage: accuracy (via the `evaluate`
callable you pass; this module does not import the trainer), params, non-zero params, MACs
(dense and effective, i.e. skipping zero weights), and bytes — `bytes_fp32` (the float32
safetensors file of the stage's model), `bytes_int8` (raw int8 weights + float32 scales + other
tensors, from the quantization stage on) and `bytes_coded` (the entropy-coded blob, coding stage).
`bytes_stored` is what the stage's artifact takes: the last of those three that applies.

What runs quantized: storage only (see `compress.quantize`): from the quantization stage on the
evaluated model is the float model holding `q · scale` weights. Entropy coding is lossless, so the
coding stage's model is bit-identical to the quantization stage's (checked on decode).

The input model must hold finite weights: a NaN/Inf tensor is refused up front, naming it.
`compress.artifact.save_compressed` / `load_compressed` write and read the reloadable output
directory.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from rankwise.compress.entropy import CODECS, decode_state, encode_state, read_header
from rankwise.compress.filter_prune import filter_prune
from rankwise.compress.prune import magnitude_prune, stage_stats
from rankwise.compress.quantize import QuantizedState, dequantize, quantize_model
from rankwise.errors import CheckpointError, ConfigError

STAGES = ("baseline", "lowrank", "prune", "quantize", "entropy")
PRUNE_KINDS = ("magnitude", "filters")
EvaluateFn = Callable[[nn.Module], dict[str, float]]


def parse_lowrank(text: str) -> tuple[str, str]:
    """`"tucker2:energy:0.9"` → `("tucker2", "energy:0.9")`; the rank part is checked by
    `rankwise.rank.parse_rank`, the format against the registered layer formats."""
    from rankwise.layers import FORMATS
    from rankwise.surgery.rank import parse_rank

    fmt, sep, rank = str(text).strip().partition(":")
    if not sep or not rank:
        raise ConfigError(f"--lowrank {text!r}: expected FORMAT:RANKSPEC, e.g. tucker2:energy:0.9 "
                          "or channel:budget:params=0.5")
    if fmt not in FORMATS:
        raise ConfigError(f"--lowrank {text!r}: unknown format {fmt!r}; available: "
                          f"{sorted(FORMATS)}")
    parse_rank(rank)
    return fmt, rank


def parse_prune(text: str) -> tuple[str, float]:
    """`"magnitude:0.5"` / `"filters:0.3"` → `(kind, fraction)`; fraction in [0, 1]."""
    kind, sep, amount = str(text).strip().partition(":")
    try:
        value = float(amount)
    except ValueError:
        value = float("nan")
    if not sep or kind not in PRUNE_KINDS or not 0.0 <= value <= 1.0:
        raise ConfigError(f"--prune {text!r}: expected magnitude:S or filters:S with S in [0, 1], "
                          "e.g. magnitude:0.5")
    return kind, value


@dataclass
class PipelineConfig:
    """Which stages run and how. Strings use the CLI syntax (`--lowrank`, `--prune`, ...).

    lowrank: FORMAT:RANKSPEC or None; linear_format: format for nn.Linear layers ("svd", "tt" or
    None to keep them dense); skip_first_conv / exclude: passed to `surgery.decompose`.
    prune: magnitude:S | filters:S or None; prune_scope: "global" | "layer" (magnitude only).
    quantize: "int8" or None. entropy_code: "zstd" | "ans" or None; zstd_level 1..22.
    """

    lowrank: str | None = None
    linear_format: str | None = "svd"
    skip_first_conv: bool = False
    exclude: tuple[str, ...] = ()
    prune: str | None = None
    prune_scope: str = "global"
    quantize: str | None = None
    entropy_code: str | None = None
    zstd_level: int = 19

    def __post_init__(self) -> None:
        if self.lowrank:
            parse_lowrank(self.lowrank)
        if self.prune:
            parse_prune(self.prune)
        if self.prune_scope not in ("global", "layer"):
            raise ConfigError(f"--prune-scope {self.prune_scope!r}: choose global or layer")
        if self.quantize not in (None, "int8"):
            raise ConfigError(f"--quantize {self.quantize!r}: only int8 is supported")
        if self.entropy_code not in (None, *CODECS):
            raise ConfigError(f"--entropy-code {self.entropy_code!r}: choose one of {CODECS}")
        if not 1 <= int(self.zstd_level) <= 22:
            raise ConfigError(f"--zstd-level {self.zstd_level}: must be in 1..22")
        self.exclude = tuple(self.exclude)

    def stages(self) -> list[str]:
        """The stages that run, in pipeline order (always starting with "baseline")."""
        on = {"baseline": True, "lowrank": bool(self.lowrank), "prune": bool(self.prune),
              "quantize": bool(self.quantize), "entropy": bool(self.entropy_code)}
        return [s for s in STAGES if on[s]]


@dataclass
class StageRow:
    """The model after one stage. MACs per sample; bytes in bytes; acc in [0, 1] or None."""

    stage: str
    detail: str
    acc: float | None
    loss: float | None
    params: int
    nonzero_params: int
    weight_params: int
    nonzero_weight_params: int
    macs: int
    effective_macs: int
    sparsity: float
    bytes_fp32: int
    bytes_int8: int | None = None
    bytes_coded: int | None = None

    @property
    def bytes_stored(self) -> int:
        """Size of this stage's artifact: coded, else int8, else fp32 bytes."""
        for b in (self.bytes_coded, self.bytes_int8, self.bytes_fp32):
            if b is not None:
                return b
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_stored": self.bytes_stored}


@dataclass
class PipelineResult:
    """Stage rows in order, the final float model, its int8 state and coded blob (if any) and
    each stage's own report (`reports[stage]`, JSON-able)."""

    rows: list[StageRow]
    model: nn.Module
    config: PipelineConfig
    state: QuantizedState | None = None
    blob: bytes | None = None
    reports: dict[str, Any] = field(default_factory=dict)

    def row(self, stage: str) -> StageRow:
        for r in self.rows:
            if r.stage == stage:
                return r
        raise KeyError(f"stage {stage!r} did not run; stages: {[r.stage for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        return {"config": {**asdict(self.config), "exclude": list(self.config.exclude)},
                "stages": [r.to_dict() for r in self.rows], "reports": self.reports}


def fp32_nbytes(model: nn.Module) -> int:
    """Bytes of `model`'s state dict as a float safetensors file (header included)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return len(save(state))


def _row(stage: str, detail: str, model: nn.Module, input_shape: Sequence[int],
         evaluate: EvaluateFn | None, **bytes_kw: int | None) -> StageRow:
    stats = stage_stats(model, tuple(input_shape))
    metrics = evaluate(model) if evaluate is not None else {}
    return StageRow(
        stage=stage, detail=detail, acc=metrics.get("acc"), loss=metrics.get("loss"),
        params=int(stats["params"]), nonzero_params=int(stats["nonzero_params"]),
        weight_params=int(stats["weight_params"]),
        nonzero_weight_params=int(stats["nonzero_weight_params"]), macs=int(stats["macs"]),
        effective_macs=int(stats["nonzero_macs"]), sparsity=float(stats["sparsity"]),
        bytes_fp32=fp32_nbytes(model), **bytes_kw)


def float_state(model: nn.Module) -> QuantizedState:
    """A lossless `QuantizedState` holding every state-dict tensor in `other` (no int8): what
    entropy coding stores when no quantization stage ran."""
    return QuantizedState(other={k: v.detach().cpu().clone()
                                 for k, v in model.state_dict().items()})


def _blob_summary(blob: bytes) -> dict[str, Any]:
    header = read_header(blob)
    groups: dict[str, dict[str, int]] = {}
    for e in header["entries"]:
        g = groups.setdefault(e["group"], {"raw_nbytes": 0, "coded_nbytes": 0, "tensors": 0})
        g["raw_nbytes"] += int(e["raw_nbytes"])
        g["coded_nbytes"] += int(e["coded_nbytes"])
        g["tensors"] += 1
    qw = groups.get("qweight")
    return {"codec": header["codec"], "level": header["level"], "blob_nbytes": len(blob),
            "header_nbytes": int(header["payload_start"]), "groups": groups,
            "qweight_bits_per_weight": 8.0 * qw["coded_nbytes"] / qw["raw_nbytes"]
            if qw and qw["raw_nbytes"] else None}


def run_pipeline(model: nn.Module, cfg: PipelineConfig, input_shape: Sequence[int],
                 evaluate: EvaluateFn | None = None, inplace: bool = False) -> PipelineResult:
    """Apply `cfg`'s stages to `model` (a copy unless `inplace`) and measure after each.

    Args:
        model: a float model (dense or already factorized).
        input_shape: one sample's shape without batch, e.g. (3, 32, 32) (MACs, surgery).
        evaluate: `model -> {"acc", "loss"}` (e.g. `rankwise.analysis.accuracy` on a test split);
            None leaves accuracy empty.
    Returns a `PipelineResult`; `result.model` is the final float model (eval mode).
    """
    shape = tuple(int(s) for s in input_shape)
    check_finite(model)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    result = PipelineResult([_row("baseline", "input model", model, shape, evaluate)], model, cfg)
    if cfg.lowrank:
        from rankwise.surgery.decompose import decompose

        fmt, rank = parse_lowrank(cfg.lowrank)
        model, rep = decompose(model, format=fmt, rank=rank, exclude=list(cfg.exclude) or None,
                               inplace=True, input_shape=shape,
                               skip_first_conv=cfg.skip_first_conv,
                               linear_format=cfg.linear_format)
        t = rep.totals
        result.reports["lowrank"] = rep.to_dict()
        result.rows.append(_row("lowrank", f"{fmt} {rep.policy}: {t['factorized']}/{t['layers']} "
                                           "layers", model, shape, evaluate))
    if cfg.prune:
        kind, amount = parse_prune(cfg.prune)
        if kind == "magnitude":
            model, prep = magnitude_prune(model, amount, scope=cfg.prune_scope, inplace=True)
            detail = f"magnitude {amount:g} ({cfg.prune_scope})"
        else:
            model, prep = filter_prune(model, amount, input_shape=shape, inplace=True)
            detail = f"filters {amount:g} (L1, per conv)"
        result.reports["prune"] = prep.to_dict()
        result.rows.append(_row("prune", detail, model, shape, evaluate))
    state: QuantizedState | None = None
    if cfg.quantize:
        state = quantize_model(model)
        model = dequantize(state, model).eval()
        result.reports["quantize"] = {"scheme": "int8 symmetric per output channel",
                                      "quantized_weights": state.num_quantized(),
                                      "raw_nbytes": state.nbytes()}
        result.rows.append(_row("quantize", "int8 per-channel (storage)", model, shape, evaluate,
                                bytes_int8=state.nbytes()))
    blob: bytes | None = None
    if cfg.entropy_code:
        coded_state = state if state is not None else float_state(model)
        blob = encode_state(coded_state, level=int(cfg.zstd_level), codec=cfg.entropy_code)
        decoded = dequantize(decode_state(blob), model).eval()
        _check_identical(model, decoded)
        model = decoded
        result.reports["entropy"] = _blob_summary(blob)
        result.rows.append(_row("entropy", f"{cfg.entropy_code}"
                                + (f" level {cfg.zstd_level}" if cfg.entropy_code == "zstd"
                                   else " (int8) + zstd"), model, shape, evaluate,
                                bytes_int8=state.nbytes() if state is not None else None,
                                bytes_coded=len(blob)))
    result.model, result.state, result.blob = model, state, blob
    return result


def check_finite(model: nn.Module, what: str = "the input model") -> None:
    """`ConfigError` naming the first parameter/buffer of `model` holding NaN or ±Inf."""
    for k, t in model.state_dict().items():
        if t.is_floating_point() and not t.is_meta and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            layer = k.rpartition(".")[0] or k
            raise ConfigError(f"{what}: tensor {k!r} (layer {layer}) holds {bad} NaN/Inf "
                              f"value(s) of {t.numel()}; compression needs finite weights: "
                              "load a checkpoint from before training diverged, or retrain")


def _bits(t: torch.Tensor) -> torch.Tensor:
    """`t`'s raw bytes (so NaN payloads compare equal to themselves)."""
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8) if t.numel() else t.reshape(-1)


def _check_identical(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for k, t in sa.items():
        if t.dtype != sb[k].dtype or not torch.equal(_bits(t), _bits(sb[k])):
            raise CheckpointError(f"entropy-coded tensor {k!r} did not decode bit-exactly; "
                                  "this is a bug in rankwise.compress.entropy")
