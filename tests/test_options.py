"""`rankwise.options`: one declaration → flags, validation, JSON round trip."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

import pytest
from hypothesis import given as hgiven
from hypothesis import settings
from hypothesis import strategies as st

from rankwise.errors import ConfigError
from rankwise.options import add_arguments, from_args, from_dict, given, option, to_dict, validate


def _pair(text: str) -> tuple[int, int]:
    a, b = text.split("x")
    return int(a), int(b)


@dataclass
class Opts:
    energy: float = option(0.9, help="kept energy, 90 %", low=0.0, high=1.0, low_open=True)
    period: int = option(1, help="every M steps", low=1)
    scheme: str = option("channel", help="matricization", choices=("channel", "spatial"))
    targets: tuple[str, ...] = option((), help="patterns")
    ranks: tuple[int, ...] = option((2, 3), help="ranks", low=1)
    substitute: bool = option(True, help="replace the weights", flag="nu-only",
                              aliases=("--no-sub",))
    bias: bool = option(True, help="keep bias")
    verbose: bool = option(False, help="talk")
    lr: float | None = option(None, help="lr", low=0.0, low_open=True)
    weight: float = option(3e-4, help="λ", low=0.0, aliases=("--weight-alias",))
    size: tuple[int, int] = option((4, 4), help="HxW", parse=_pair)
    limit: float = option(math.inf, help="cap", low=0.0, high=math.inf)

    def __post_init__(self) -> None:
        self.targets, self.ranks = tuple(self.targets), tuple(self.ranks)
        validate(self)


def parser(prefix: str = "m") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_arguments(p, Opts, prefix)
    return p


def test_flags_names_aliases_and_suppressed_defaults():
    p = parser()
    assert vars(p.parse_args([])) == {}  # nothing given → nothing in the namespace
    args = p.parse_args(["--m-energy", "0.5", "--m-targets", "a,b", "c", "--no-sub",
                         "--m-no-bias", "--m-verbose", "--m-lr", "0.1", "--weight-alias",
                         "0.01", "--m-size", "3x5", "--m-ranks", "4,5"])
    cfg = from_args(Opts, args, "m")
    assert cfg == Opts(energy=0.5, targets=("a", "b", "c"), substitute=False, bias=False,
                       verbose=True, lr=0.1, weight=0.01, size=(3, 5), ranks=(4, 5))
    assert set(given(args, Opts, "m")) == {"--m-energy", "--m-targets", "--m-nu-only",
                                           "--m-no-bias", "--m-verbose", "--m-lr",
                                           "--m-weight", "--m-size", "--m-ranks"}
    assert from_args(Opts, p.parse_args(["--m-bias"]), "m").bias is True
    assert from_args(Opts, p.parse_args(["--m-lr", "none"]), "m").lr is None
    help_text = p.format_help()
    assert "(default: 0.9)" in help_text and "90 %" in help_text


def test_unprefixed_flags_and_base_config():
    p = argparse.ArgumentParser()
    add_arguments(p, Opts)
    args = p.parse_args(["--period", "3", "--no-bias"])
    base = Opts(energy=0.5)
    cfg = from_args(Opts, args, base=base)
    assert (cfg.energy, cfg.period, cfg.bias) == (0.5, 3, False)


def test_taken_alias_is_dropped_prefixed_flag_still_works():
    p = argparse.ArgumentParser()
    p.add_argument("--weight-alias")
    add_arguments(p, Opts, "m")
    assert from_args(Opts, p.parse_args(["--m-weight", "0.5"]), "m").weight == 0.5


@pytest.mark.parametrize(("kw", "text"), [
    (dict(energy=0.0), "Opts.energy must be > 0.0 and <= 1.0, got 0.0"),
    (dict(energy=float("nan")), "Opts.energy must be finite"),
    (dict(weight=float("inf")), "Opts.weight must be finite"),
    (dict(period=0), "Opts.period must be >= 1, got 0"),
    (dict(period=1.5), "Opts.period must be an int"),
    (dict(scheme="x"), "Opts.scheme must be one of"),
    (dict(ranks=(1, 0)), r"Opts.ranks\[1\] must be >= 1"),
    (dict(lr=0.0), "Opts.lr must be > 0.0"),
])
def test_validation_names_class_field_bound_and_value(kw, text):
    with pytest.raises(ConfigError, match=text):
        Opts(**kw)


def test_inf_allowed_when_the_bound_is_inf():
    assert Opts(limit=math.inf).limit == math.inf


def test_bad_flag_value_is_a_cli_error():
    with pytest.raises(SystemExit):
        parser().parse_args(["--m-scheme", "diagonal"])
    with pytest.raises(ConfigError, match="Opts.energy"):
        from_args(Opts, parser().parse_args(["--m-energy", "2"]), "m")


@settings(max_examples=30, deadline=None)
@hgiven(energy=st.floats(0.01, 1.0), period=st.integers(1, 100),
        targets=st.lists(st.text("abc*.", min_size=1, max_size=5), max_size=3),
        sub=st.booleans(), lr=st.one_of(st.none(), st.floats(1e-4, 10.0)))
def test_json_round_trip(energy, period, targets, sub, lr):
    cfg = Opts(energy=energy, period=period, targets=tuple(targets), substitute=sub, lr=lr)
    d = json.loads(json.dumps(to_dict(cfg)))
    assert from_dict(Opts, d) == cfg


def test_from_dict_unknown_keys_and_missing_keys():
    with pytest.raises(ConfigError, match="unknown option"):
        from_dict(Opts, {"energy": 0.5, "old_field": 1})
    assert from_dict(Opts, {"energy": 0.5, "old_field": 1}, strict=False).energy == 0.5
    assert from_dict(Opts, {}) == Opts()
    assert from_dict(Opts, {"size": "2x3"}).size == (2, 3)
