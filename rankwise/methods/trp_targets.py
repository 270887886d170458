"""Which layers TRP acts on: `find_targets(model, cfg)` applies `TRPConfig`'s rule (every
non-1×1 `nn.Conv2d` except the first, as the reference code; `include_*` widen it, `targets`
patterns replace it); `require_targets` refuses a model with none."""

from __future__ import annotations

from torch import nn

from rankwise.errors import ConfigError
from rankwise.methods.trp_config import TRPConfig
from rankwise.surgery.decompose import matches


def find_targets(model: nn.Module, cfg: TRPConfig) -> list[str]:
    """Names of the modules TRP acts on (see `TRPConfig`), in registration order."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    first = convs[0] if convs else None
    out = []
    for name, mod in model.named_modules():
        if not name or not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        if cfg.targets:
            if matches(name, mod, list(cfg.targets)):
                out.append(name)
            continue
        if isinstance(mod, nn.Linear):
            keep = cfg.include_linear
        else:
            one = tuple(mod.kernel_size) == (1, 1)
            keep = (cfg.include_1x1 or not one) and (cfg.include_first_conv or name != first)
        if keep:
            out.append(name)
    return out


def require_targets(model: nn.Module, cfg: TRPConfig) -> list[str]:
    """`find_targets`, or ConfigError saying how to widen the rule."""
    targets = find_targets(model, cfg)
    if not targets:
        raise ConfigError(
            f"TRP: no target layer in {type(model).__name__} (rule: non-1×1 Conv2d except the "
            f"first; targets={cfg.targets}); widen it with --trp-include-1x1/-linear/"
            "-first-conv or --trp-targets")
    return targets


__all__ = ["find_targets", "require_targets"]
