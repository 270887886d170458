"""`ELRTConfig`: the options of ELRT (declared once: CLI `--elrt-<field>`, validation,
config.json) and the rank policies ELRT accepts (`resolve_policy`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rankwise.errors import ConfigError
from rankwise.options import option, validate

CONV_FORMATS = ("tucker2", "channel", "spatial", "cp")
LINEAR_FORMATS = ("svd", "tt")
INT_RANK_FORMATS = frozenset({"svd", "channel", "spatial", "cp"})
REPORT = "elrt_report.json"


@dataclass
class ELRTConfig:
    """ELRT options (CLI `--elrt-<field>`). `format` is the conv format (a linear format
    "svd"/"tt" here means: linears use it, convs use "channel"); 1×1 convs always use "channel".
    Defaults are ours (unverified against the paper), except Tucker-2 (paper)."""

    format: str = option("tucker2", choices=CONV_FORMATS + LINEAR_FORMATS,
                         help="factorized format of the convs")
    rank: str = option("ratio:0.25", help="fixed:R | ratio:F | budget:params=X | budget:macs=X")
    orth_weight: float = option(1e-3, low=0.0, help="λ of the orthogonality penalty")
    linear_format: str = option("svd", choices=LINEAR_FORMATS + ("none",),
                                help="format of nn.Linear layers (none: keep dense)")
    skip_first_conv: bool = option(True, aliases=("--no-elrt-skip-first-conv",),
                                   help="keep the first conv dense")
    skip_classifier: bool = option(True, aliases=("--no-elrt-skip-classifier",),
                                   help="keep the classifier dense")
    include: tuple[str, ...] = option((), help="layer globs to factorize")
    exclude: tuple[str, ...] = option((), help="layer globs to keep dense")
    init_mode: str = option("fan_in", choices=("fan_in", "fan_out"),
                            help="Kaiming mode the factors' variance matches")
    init_distribution: str = option("normal", choices=("normal", "uniform"), flag="init-dist",
                                    help="distribution of the factor init")
    nonlinearity: str = option("relu", help="Kaiming gain's nonlinearity")
    seed: int | None = option(None, help="seed of the factor init (None: global RNG)")
    log_every: int | None = option(None, low=1, help="steps between penalty log rows "
                                                     "(None: the trainer's)")
    budget_allocation: str = option("uniform", choices=("uniform", "greedy"),
                                    help="budgets: one rank fraction for all layers (uniform) "
                                         "or allocate_budget on flat spectra (greedy)")
    rank_multiple: int = option(1, low=1, help="round ranks down to multiples of this (e.g. 8)")

    def __post_init__(self) -> None:
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)
        validate(self)
        resolve_policy(self.rank)


def resolve_policy(rank: Any) -> Any:
    """The rank policy for ELRT; `ConfigError` for policies that need a trained weight."""
    from rankwise.surgery.rank import RankPolicy, parse_rank

    policy = parse_rank(rank) if isinstance(rank, str) else rank
    if isinstance(policy, int) or (isinstance(policy, tuple) and policy):
        from rankwise.surgery.rank import Fixed

        policy = Fixed(policy)
    if not isinstance(policy, RankPolicy):
        raise ConfigError(f"ELRT rank {rank!r} is not a rank policy; use fixed:8, ratio:0.25, "
                          "budget:params=0.3 or budget:macs=0.3")
    if policy.needs_spectra and not policy.is_global:
        raise ConfigError(
            f"ELRT rank {policy} reads the singular values of a trained weight, but ELRT trains "
            "from scratch and no dense weight ever exists; use fixed:R, ratio:F, "
            "budget:params=X or budget:macs=X (budgets assume a flat spectrum)")
    return policy


__all__ = ["CONV_FORMATS", "ELRTConfig", "INT_RANK_FORMATS", "LINEAR_FORMATS", "REPORT",
           "resolve_policy"]
