"""Options declared once: dataclass fields → CLI flags, validation, `config.json`, constructor.

A method (or the trainer) declares its options as a dataclass whose fields are built with
`option(...)` (help text, bounds, choices, a parser for custom types). Everything else is
derived from that declaration:

    @dataclass
    class TRPConfig:
        energy: float = option(0.9, help="fraction of Σσ² kept", low=0.0, high=1.0,
                               low_open=True)
        period: int = option(1, help="TRP step every M iterations", low=1)
        targets: tuple[str, ...] = option((), help="module-name patterns")

        def __post_init__(self) -> None:
            validate(self)              # the Python constructor validates too

    parser = argparse.ArgumentParser()
    add_arguments(parser, TRPConfig, prefix="trp")   # --trp-energy, --trp-period, ...
    args = parser.parse_args(["--trp-energy", "0.8", "--trp-targets", "layer1.*,layer2.*"])
    cfg = from_args(TRPConfig, args, prefix="trp")   # TRPConfig(energy=0.8, targets=(...))
    given(args, TRPConfig, "trp")                    # ['--trp-energy', '--trp-targets']
    from_dict(TRPConfig, to_dict(cfg)) == cfg        # JSON round trip

Flag names: `--{prefix}-{field-with-dashes}` (`--{field}` when `prefix == ""`); `flag=` in
`option` replaces the field part (`flag="threshold"` → `--trp-threshold`), `aliases=` adds
full extra option strings (`("--nuclear-weight",)`; an alias already taken on the parser is
dropped). A bool defaulting to False is a `store_true` switch; one defaulting to True is
switched off by `--{prefix}-no-{field}` (`--no-{field}` without a prefix; `--{prefix}-{field}`
is accepted too; with `flag=`, the flag given is the only, switching-off one). List/tuple
fields take one or more values, each comma-separated.
Every flag's default is `argparse.SUPPRESS`: only the flags actually given reach the namespace,
so `from_args` can layer them over a base config and `given` can refuse another method's flags.
This module imports only the standard library and `rankwise.errors`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING
from typing import Any

from rankwise.errors import ConfigError

_KEY = "rankwise_option"


def option(default: Any = MISSING, *, help: str, choices: Sequence[Any] | None = None,
           low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, parse: Callable[[str], Any] | None = None,
           default_factory: Any = MISSING, flag: str | None = None,
           aliases: Sequence[str] = ()) -> Any:
    """A dataclass field with help text and bounds (see the module docstring).

    `low`/`high` bound numbers (and every element of a list/tuple field), inclusive unless
    `low_open`/`high_open`; `choices` restricts values (element-wise for lists); `parse` turns a
    CLI string into the field's value (for a list/tuple field: the whole value, no
    splitting); `flag` and `aliases` rename/add option strings.
    """
    meta = {_KEY: {"help": help, "choices": tuple(choices) if choices is not None else None,
                   "low": low, "high": high, "low_open": low_open, "high_open": high_open,
                   "parse": parse, "flag": flag, "aliases": tuple(aliases)}}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ----- type helpers ---------------------------------------------------------------------------


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """(`X`, True) for `X | None`; (`tp`, False) otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _sequence_of(tp: Any) -> tuple[type, Any] | None:
    """(`tuple`/`list`, element type) for `tuple[X, ...]` / `list[X]`; None otherwise."""
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return origin, (args[0] if args else str)
    if tp in (tuple, list):
        return tp, str
    return None


def _meta(f: dataclasses.Field) -> dict[str, Any]:
    return dict(f.metadata.get(_KEY) or {})


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _scalar_parser(tp: Any, meta: dict[str, Any]) -> Callable[[str], Any]:
    if meta.get("parse") is not None:
        return meta["parse"]
    if tp is bool:
        return _parse_bool
    if tp in (int, float, str):
        return tp
    return str


def _parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _dest(prefix: str, name: str) -> str:
    return f"{prefix.replace('-', '_')}_{name}" if prefix else name


def _flag(prefix: str, f: dataclasses.Field, negative: bool) -> str:
    """The primary option string of field `f` (`negative`: a bool that defaults to True)."""
    part = _meta(f).get("flag")
    if part is None:
        part = ("no-" if negative else "") + f.name.replace("_", "-")
    return f"--{prefix}-{part}" if prefix else f"--{part}"


# ----- CLI ------------------------------------------------------------------------------------


def add_arguments(parser: Any, cls: type, prefix: str = "") -> None:
    """Add one flag per field of dataclass `cls` to `parser` (a parser or argument group).

    Defaults are `argparse.SUPPRESS`; the help text shows the declared default.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = _meta(f)
        if not meta:
            continue
        tp, optional = _strip_optional(hints[f.name])
        default = _default(f)
        dest = _dest(prefix, f.name)
        text = str(meta["help"]).replace("%", "%%")
        if default is not MISSING and not (tp is bool and not optional):
            shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            text = f"{text} (default: {shown if shown != '' else 'none'})"
        kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": text}
        negative = False
        if tp is bool and not optional:
            negative = default is True
            kw["action"] = "store_false" if negative else "store_true"
        else:
            seq = _sequence_of(tp) if meta.get("parse") is None else None
            if seq is not None:
                kw.update(nargs="+", type=_split_parser(seq[1], meta), metavar="V[,V...]")
            else:
                parse = _scalar_parser(tp, meta)
                kw["type"] = _none_or(parse) if optional else parse
                if meta.get("choices") is not None and not optional:
                    kw["choices"] = meta["choices"]
        _add(parser, _flag(prefix, f, negative), tuple(meta.get("aliases") or ()), kw)
        if negative and not meta.get("flag"):  # `--x` next to `--no-x`: sets the default
            _add(parser, _flag(prefix, f, False), (), {**kw, "action": "store_true",
                                                       "help": argparse.SUPPRESS})


def _add(parser: Any, flag: str, aliases: tuple[str, ...], kw: dict[str, Any]) -> None:
    """Add `flag` + `aliases`; aliases already taken on `parser` are dropped one by one."""
    taken = getattr(parser, "_option_string_actions", {})
    parser.add_argument(flag, *[a for a in aliases if a not in taken], **kw)


def _none_or(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def inner(text: str) -> Any:
        return None if str(text).strip().lower() in ("none", "null") else parse(text)

    inner.__name__ = getattr(parse, "__name__", "value")
    return inner


def _split_parser(elem: Any, meta: dict[str, Any]) -> Callable[[str], list[Any]]:
    parse = _scalar_parser(elem, meta)

    def split(text: str) -> list[Any]:
        return [parse(s.strip()) for s in str(text).split(",") if s.strip()]

    split.__name__ = getattr(parse, "__name__", "list")
    return split


def given(args: argparse.Namespace, cls: type, prefix: str = "") -> list[str]:
    """The flags of `cls` present in `args` (e.g. to refuse another method's flags)."""
    present = vars(args)
    out = []
    for f in dataclasses.fields(cls):
        if _meta(f) and present.get(_dest(prefix, f.name), argparse.SUPPRESS) \
                is not argparse.SUPPRESS:
            neg = typing.get_type_hints(cls)[f.name] is bool and _default(f) is True
            out.append(_flag(prefix, f, neg))
    return out


def from_args(cls: type, args: argparse.Namespace, prefix: str = "", base: Any = None) -> Any:
    """An instance of `cls`: the flags given in `args` over `base` (or the defaults), validated."""
    present = vars(args)
    hints = typing.get_type_hints(cls)
    over: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        dest = _dest(prefix, f.name)
        if not _meta(f) or present.get(dest, argparse.SUPPRESS) is argparse.SUPPRESS:
            continue
        value = present[dest]
        tp, _ = _strip_optional(hints[f.name])
        seq = _sequence_of(tp) if _meta(f).get("parse") is None else None
        if seq is not None and value is not None:
            flat = [v for chunk in value for v in (chunk if isinstance(chunk, list) else [chunk])]
            value = seq[0](flat)
        over[f.name] = value
    obj = dataclasses.replace(base, **over) if base is not None else cls(**over)
    validate(obj)
    return obj


# ----- validation -----------------------------------------------------------------------------


def _bound_text(meta: dict[str, Any]) -> str:
    parts = []
    if meta.get("low") is not None:
        parts.append(f"{'>' if meta['low_open'] else '>='} {meta['low']}")
    if meta.get("high") is not None:
        parts.append(f"{'<' if meta['high_open'] else '<='} {meta['high']}")
    return " and ".join(parts)


def _check_scalar(where: str, value: Any, tp: Any, meta: dict[str, Any]) -> None:
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where} must be a bool, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where} must be an int, got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        allow_inf = (meta.get("low") == -math.inf) or (meta.get("high") == math.inf)
        if math.isnan(value) or (math.isinf(value) and not allow_inf):
            raise ConfigError(f"{where} must be finite, got {value!r}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where} must be one of {list(choices)}, got {value!r}")
    low, high = meta.get("low"), meta.get("high")
    if (low is not None or high is not None) and isinstance(value, (int, float)):
        bad = ((low is not None and (value <= low if meta["low_open"] else value < low))
               or (high is not None and (value >= high if meta["high_open"] else value > high)))
        if bad:
            raise ConfigError(f"{where} must be {_bound_text(meta)}, got {value!r}")


def validate(obj: Any) -> None:
    """ConfigError naming `Class.field`, the bound and the value for the first bad field."""
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(obj):
        meta = _meta(f)
        if not meta:
            continue
        value = getattr(obj, f.name)
        tp, optional = _strip_optional(hints[f.name])
        where = f"{cls.__name__}.{f.name}"
        if value is None:
            if optional:
                continue
            raise ConfigError(f"{where} must not be None")
        seq = _sequence_of(tp)
        if seq is not None:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where} must be a list, got {value!r}")
            for i, v in enumerate(value):
                _check_scalar(f"{where}[{i}]", v, seq[1], meta)
        elif tp in (bool, int, float, str) or meta.get("choices") is not None \
                or meta.get("low") is not None or meta.get("high") is not None:
            _check_scalar(where, value, tp, meta)


# ----- JSON -----------------------------------------------------------------------------------


def _json(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def to_dict(obj: Any) -> dict[str, Any]:
    """The dataclass `obj` as a JSON-able dict (tuples → lists, other leaves → str)."""
    return {f.name: _json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def from_dict(cls: type, d: dict[str, Any], strict: bool = True) -> Any:
    """Inverse of `to_dict`; unknown keys raise ConfigError when `strict` (else are ignored).

    Lists become tuples for tuple fields; strings go through the field's `parse` when the
    field is not a string. Missing keys take their defaults. The result is validated.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown and strict:
        raise ConfigError(f"{cls.__name__}: unknown option(s) {unknown}; known: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        if name not in fields:
            continue
        tp, _ = _strip_optional(hints[name])
        seq = _sequence_of(tp)
        parse = _meta(fields[name]).get("parse")
        if seq is not None and isinstance(value, (list, tuple)):
            value = seq[0](value)
        elif parse is not None and isinstance(value, str) and tp is not str:
            value = parse(value)
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{cls.__name__}: {e}") from e
    validate(obj)
    return obj


__all__ = ["add_arguments", "from_args", "from_dict", "given", "option", "to_dict", "validate"]
