"""`rankwise.train.recipes` (the Recipe registry) and `rankwise.methods` (the method registry)."""

import argparse
from dataclasses import dataclass

import pytest
from torch import nn

from rankwise.errors import ConfigError
from rankwise.methods import METHOD_CLASSES, TRP, CompressionMethod, register_method
from rankwise.methods.base import json_safe
from rankwise.options import option
from rankwise.train.recipes import RECIPES, Recipe, get_recipe, register_recipe


def test_every_recipe_is_registered_with_its_flags():
    assert set(RECIPES) >= {"dense", "trp", "sfw", "nuclear-penalty", "elrt", "erank-reg",
                            "subspace"}
    parser = argparse.ArgumentParser()
    for recipe in RECIPES.values():  # all recipes share one parser: no flag clashes
        recipe.add_arguments(parser.add_argument_group(recipe.name))
    args = parser.parse_args(["--trp-scheme", "channel", "--trp-energy", "0.9", "--trp-period",
                              "1", "--nuclear-weight", "3e-4", "--trp-threshold", "0.1",
                              "--no-trp", "--retrain", "2"])
    cfg = get_recipe("trp").config_from_args(args)
    assert (cfg.energy, cfg.period, cfg.nuclear_weight, cfg.value_threshold) == (0.9, 1, 3e-4,
                                                                                  0.1)
    assert cfg.trp is False and cfg.retrain == 2
    assert get_recipe("trp").given_flags(args)
    assert get_recipe("sfw").given_flags(args) == []


def test_dense_is_registered_and_does_nothing():
    dense = get_recipe("dense")
    model = nn.Linear(2, 3)
    cfg = dense.config_from_args(argparse.Namespace())
    assert dense.prepare_model(model, cfg, (2,)) is model
    assert dense.hooks(cfg) == [] and dense.make_optimizer(model, None, cfg) is None
    assert dense.finalize(None, cfg) == {} and dense.config_to_dict(cfg) == {}


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ConfigError, match="dense"):
        get_recipe("nope")


@dataclass
class Cfg:
    ranks: tuple[int, ...] = option((2, 3), help="ranks", low=1)
    energy: float = option(0.9, help="energy", low=0.0, high=1.0)


def test_recipe_config_roundtrip_refuses_unknown_keys():
    @register_recipe
    class WithConfig(Recipe):
        name = "withcfg-test"
        config_cls = Cfg

    try:
        r = get_recipe("withcfg-test")
        d = r.config_to_dict(Cfg(ranks=(4, 5), energy=0.5))
        assert d == {"ranks": [4, 5], "energy": 0.5}
        assert r.config_from_dict(d) == Cfg(ranks=(4, 5), energy=0.5)
        with pytest.raises(ConfigError, match="unknown_future_field"):
            r.config_from_dict({**d, "unknown_future_field": 1})
    finally:
        RECIPES.pop("withcfg-test")


def test_register_method_names_classes_and_refuses_duplicates():
    assert METHOD_CLASSES["trp"] is TRP and TRP.name == "trp"

    @register_method("dummy-test")
    class Dummy(CompressionMethod):
        pass

    try:
        assert Dummy.name == "dummy-test" and METHOD_CLASSES["dummy-test"] is Dummy
        with pytest.raises(ConfigError, match="twice"):
            register_method("dummy-test")(type("Other", (CompressionMethod,), {}))
    finally:
        METHOD_CLASSES.pop("dummy-test")


def test_base_life_cycle_is_a_no_op():
    m = CompressionMethod()
    m.before_forward(0)
    m.after_backward(0)
    m.after_step(0)
    assert m.penalty() is None and m.add_penalty_grad() is None and m.state_dict() == {}


def test_json_safe_converts_leaves():
    assert json_safe({"a": (1, 2), 3: nn.ReLU, "b": None}) == {
        "a": [1, 2], "3": str(nn.ReLU), "b": None}


OLD_TRP_METHOD_CONFIG = {  # config.json "method_config" of a TRP run before the declarations
    "scheme": "channel", "energy": 0.9, "period": 1, "nuclear_weight": 0.0003, "trp": True,
    "value_threshold": 0.05, "decompose_rank": None, "retrain": 0, "retrain_lr": None,
    "targets": [], "include_first_conv": False, "include_1x1": False, "include_linear": False,
    "counting": "rankwise"}


def test_existing_trp_runs_keep_their_flags_and_config_json():
    from rankwise.cli import build_parser
    from rankwise.methods import TRPConfig

    recipe = get_recipe("trp")
    assert recipe.config_from_dict(OLD_TRP_METHOD_CONFIG) == TRPConfig()
    args = build_parser().parse_args(
        ["train", "--model", "resnet20", "--dataset", "cifar10", "--out", "runs/x", "--method",
         "trp", "--trp-scheme", "channel", "--trp-energy", "0.9", "--trp-period", "1",
         "--nuclear-weight", "3e-4", "--resume"])
    cfg = recipe.config_from_args(args)
    assert cfg == TRPConfig(scheme="channel", energy=0.9, period=1, nuclear_weight=3e-4)
    assert recipe.config_to_dict(cfg) == {**OLD_TRP_METHOD_CONFIG, "energy_on": "sigma2"}
