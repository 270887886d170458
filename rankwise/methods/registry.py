"""`@register_method`: the loop-agnostic method classes by name (`METHOD_CLASSES`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from rankwise.errors import ConfigError

T = TypeVar("T", bound=type)

METHOD_CLASSES: dict[str, type] = {}


def register_method(name: str) -> Callable[[T], T]:
    """Class decorator: register a `CompressionMethod` subclass under `name` (sets `cls.name`)."""

    def deco(cls: T) -> T:
        if name in METHOD_CLASSES and METHOD_CLASSES[name] is not cls:
            raise ConfigError(f"method {name!r} is registered twice ({METHOD_CLASSES[name]} and "
                              f"{cls}); pick another name")
        cls.name = name
        METHOD_CLASSES[name] = cls
        return cls

    return deco


def method_class(name: str) -> type:
    """The method class registered as `name`; ConfigError listing the known names otherwise."""
    if name not in METHOD_CLASSES:
        raise ConfigError(f"unknown method {name!r}; available: {sorted(METHOD_CLASSES)}")
    return METHOD_CLASSES[name]


__all__ = ["METHOD_CLASSES", "method_class", "register_method"]
