"""Stochastic Frank-Wolfe and its constraint sets (LMOs) for compression-aware training."""

from rankwise.optim.constraints import (
    CONSTRAINTS,
    PARAMETRIC,
    STRUCTURED,
    Constraint,
    GroupKSupportBall,
    KSparsePolytope,
    KSupportBall,
    L1Ball,
    L2Ball,
    LInfBall,
    LpBall,
    NuclearBall,
    SpectralConstraint,
    SpectralKSparsePolytope,
    SpectralKSupportBall,
    Unconstrained,
    diameter_from_init,
    expected_init_norm,
    k_support_norm,
    make_constraint,
    make_param_groups,
    radius_from_init,
    resolve_k,
    shift_model_to_feasible,
)
from rankwise.optim.prox import ProxSGD, prox_nuclear, prox_param_groups, svt
from rankwise.optim.sfw import SFW

__all__ = [
    "SFW", "CONSTRAINTS", "PARAMETRIC", "STRUCTURED", "Constraint", "Unconstrained", "L2Ball",
    "L1Ball", "LInfBall", "LpBall", "ProxSGD", "prox_nuclear", "prox_param_groups", "svt",
    "KSparsePolytope", "KSupportBall", "GroupKSupportBall", "NuclearBall",
    "SpectralConstraint", "SpectralKSparsePolytope", "SpectralKSupportBall", "k_support_norm",
    "resolve_k", "make_constraint", "expected_init_norm", "radius_from_init",
    "diameter_from_init", "make_param_groups", "shift_model_to_feasible",
]
