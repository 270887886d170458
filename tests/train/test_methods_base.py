"""`rankwise.methods`: the Method base class, DenseMethod and the METHODS registry."""

import argparse
import types
from dataclasses import dataclass, field

import pytest
from torch import nn

from rankwise.errors import ConfigError
from rankwise.methods import METHODS, DenseMethod, Method, get_method
from rankwise.methods import _find_method as find_method
from rankwise.methods.base import json_safe


def test_dense_is_registered_and_does_nothing():
    dense = get_method("dense")
    assert isinstance(dense, DenseMethod) and METHODS["dense"] is dense
    model = nn.Linear(2, 3)
    cfg = dense.config_from_args(argparse.Namespace())
    assert dense.prepare_model(model, cfg, (2,)) is model
    assert dense.hooks(cfg) == [] and dense.make_optimizer(model, None, cfg) is None
    assert dense.finalize(None, cfg) == {} and dense.config_to_dict(cfg) == {}


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ConfigError, match="dense"):
        get_method("nope")


@dataclass
class Cfg:
    ranks: tuple[int, ...] = (2, 3)
    energy: float = 0.9
    names: list[str] = field(default_factory=lambda: ["a"])


class WithConfig(Method):
    name = "withcfg"
    config_class = Cfg


def test_config_roundtrip_through_json_types():
    m = WithConfig()
    d = m.config_to_dict(Cfg(ranks=(4, 5), energy=0.5))
    assert d == {"ranks": [4, 5], "energy": 0.5, "names": ["a"]}
    back = m.config_from_dict({**d, "unknown_future_field": 1})
    assert back.ranks == (4, 5) and back.energy == 0.5


def test_json_safe_converts_leaves():
    assert json_safe({"a": (1, 2), 3: nn.ReLU, "b": None}) == {
        "a": [1, 2], "3": str(nn.ReLU), "b": None}


def test_find_method_prefers_METHOD_then_single_subclass():
    mod = types.ModuleType("fake_methods")
    assert find_method(mod) is None
    WithConfig.__module__ = "fake_methods"
    mod.WithConfig = WithConfig
    found = find_method(mod)
    assert isinstance(found, WithConfig)
    mod.METHOD = DenseMethod()
    assert find_method(mod) is mod.METHOD
