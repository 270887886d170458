"""Training paradigms as trainer plug-ins; `METHODS` maps `--method` names to `Method` objects.

Each method module (`trp`, `sfw`, `elrt`, `subspace`, `erank_reg`) exposes `METHOD: Method`;
a module that is not written yet is skipped (like `rankwise.cli` skips missing commands).
"""

from __future__ import annotations

import importlib

from rankwise.methods.base import DenseConfig, DenseMethod, Method

METHOD_MODULES = ("trp", "sfw", "elrt", "subspace", "erank_reg")


def _find_method(module: object) -> Method | None:
    """`module.METHOD`, else an instance of the one `Method` subclass the module defines."""
    method = getattr(module, "METHOD", None)
    if isinstance(method, Method):
        return method
    classes = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Method)
               and v not in (Method, DenseMethod) and v.__module__ == module.__name__]
    return classes[0]() if len(classes) == 1 else None


def _load_methods() -> dict[str, Method]:
    methods: dict[str, Method] = {"dense": DenseMethod()}
    for name in METHOD_MODULES:
        try:
            module = importlib.import_module(f"rankwise.methods.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"rankwise.methods.{name}":
                continue  # method not written yet
            raise
        method = _find_method(module)
        if method is not None:
            methods[method.name] = method
        for extra in getattr(module, "EXTRA_METHODS", ()):  # e.g. sfw's nuclear-penalty baseline
            methods[extra.name] = extra
    return methods


METHODS: dict[str, Method] = _load_methods()


def get_method(name: str) -> Method:
    """The registered method `name`; ConfigError listing the known names otherwise."""
    from rankwise.errors import ConfigError

    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {sorted(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "DenseConfig", "DenseMethod", "Method", "get_method"]
