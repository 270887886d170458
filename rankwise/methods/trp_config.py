"""`TRPConfig`: the options of TRP, declared once (CLI `--trp-*`, validation, config.json)."""

from __future__ import annotations

from dataclasses import dataclass

from rankwise.linalg.grouped import SCHEMES
from rankwise.options import option, validate

COUNTINGS = ("rankwise", "reference", "trp")  # "trp": the old name of "reference"
ENERGY_ON = ("sigma2", "sigma")


def _check_rank(text: str) -> str:
    from rankwise.surgery.rank import parse_rank

    parse_rank(text)  # ConfigError on a bad string
    return text


@dataclass
class TRPConfig:
    """TRP options; defaults from the reference code (`cifar-TRP.py`) unless marked ours.

    Targets: every `nn.Conv2d` whose kernel is not 1×1, except the first conv (code);
    `include_*` widen it, `targets` (glob/regex patterns) replaces the rule.
    """

    scheme: str = option("channel", choices=SCHEMES,
                         help="matricization: channel (NC, (n, c·kh·kw)), spatial (VH) or nd "
                              "(network decoupling: per filter (c, kh·kw))")
    energy: float = option(0.9, low=0.0, high=1.0, low_open=True,
                           help="energy kept by the in-training truncation")
    energy_on: str = option("sigma2", choices=ENERGY_ON,
                            help="energy of Σσ² (code) or of Σσ")
    period: int = option(1, low=1, help="TRP step every M iterations (code: --decouple-period)")
    nuclear_weight: float = option(3e-4, low=0.0, aliases=("--nuclear-weight",),
                                   help="nuclear sub-gradient weight λ; 0 disables")
    trp: bool = option(True, flag="nu-only", aliases=("--no-trp",),
                       help="no weight substitution: nuclear regularization only (the paper's Nu)")
    value_threshold: float = option(0.05, low=0.0, flag="threshold",
                                    help="post-training decomposition keeps σ ≥ t")
    decompose_rank: str | None = option(None, parse=_check_rank,
                                        help="post-training rank policy instead of the "
                                             "threshold, e.g. energy:0.85 (the code's ND)")
    retrain: int = option(0, low=0, aliases=("--retrain",),
                          help="fine-tune the factorized model N epochs (code: 4)")
    retrain_lr: float | None = option(None, low=0.0, low_open=True,
                                      help="constant lr of the retraining (None: the run's lr)")
    targets: tuple[str, ...] = option((), help="module-name globs/regexes to target instead "
                                               "of the automatic rule")
    include_first_conv: bool = option(False, help="target the first conv too")
    include_1x1: bool = option(False, help="target 1×1 convs too")
    include_linear: bool = option(False, help="target nn.Linear too")
    counting: str = option("rankwise", choices=COUNTINGS,
                           help="headline cost: rankwise (all params, MACs/sample incl. FC) or "
                                "reference (the code: only stride-1 convs decomposed, FLOPs per "
                                "output pixel × pixels, convs only)")

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if self.counting == "trp":
            self.counting = "reference"
        validate(self)
        if self.decompose_rank is not None:
            _check_rank(self.decompose_rank)


__all__ = ["COUNTINGS", "ENERGY_ON", "SCHEMES", "TRPConfig"]
