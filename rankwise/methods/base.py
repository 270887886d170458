"""`Method`: a training paradigm as a trainer plug-in, and `DenseMethod` (plain training).

A method turns parsed CLI flags into its config dataclass, rewrites the model before training
(`prepare_model`), supplies hooks and optionally its own optimizer, and converts/reports after
training (`finalize`). `rankwise train --method NAME` drives exactly this sequence:

    cfg = method.config_from_args(args)
    model = method.prepare_model(model, cfg, input_shape)
    trainer = Trainer(model, train_cfg, ..., hooks=method.hooks(cfg),
                      optimizer=method.make_optimizer(model, train_cfg, cfg))
    trainer.fit(); report = method.finalize(trainer, cfg)
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from rankwise.train import Hook, TrainConfig, Trainer


@dataclass
class DenseConfig:
    """Plain training has no options."""


class Method:
    """Base class; every method is optional and defaults to "do nothing special".

    Subclasses set `name` (the `--method` value) and `config_class` (a dataclass whose fields
    are mirrored as `--<name>-<field>` flags by `add_arguments`). Flag names must be prefixed
    with the method name so that all methods can share the `rankwise train` parser.
    """

    name: str = "base"
    config_class: type = DenseConfig
    help: str = ""

    def add_arguments(self, parser: argparse.ArgumentParser | Any) -> None:
        """Add this method's `--<name>-...` flags to `parser` (an argument group is fine)."""

    def config_from_args(self, args: argparse.Namespace) -> Any:
        """Build the config dataclass from parsed flags (default: no options)."""
        return self.config_class()

    def prepare_model(self, model: nn.Module, cfg: Any,
                      input_shape: tuple[int, ...]) -> nn.Module:
        """Rewrite `model` before training (e.g. factorize layers); `input_shape` is (C, H, W)."""
        return model

    def hooks(self, cfg: Any) -> list[Hook]:
        """Trainer hooks implementing the method during training."""
        return []

    def make_optimizer(self, model: nn.Module, train_cfg: TrainConfig,
                       cfg: Any) -> torch.optim.Optimizer | None:
        """An optimizer over `model`, or None for the trainer's SGD from `train_cfg`."""
        return None

    def finalize(self, trainer: Trainer, cfg: Any) -> dict[str, Any]:
        """After training: convert the model (may replace `trainer.model` and call
        `trainer.save_model()`), write a report into `trainer.out_dir`, return a JSON-able
        summary that `rankwise train` prints and stores in `summary.json`."""
        return {}

    def config_to_dict(self, cfg: Any) -> dict[str, Any]:
        """The config as a JSON-able dict (stored in the run's config.json)."""
        if cfg is None:
            return {}
        if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
            return json_safe(dataclasses.asdict(cfg))
        return json_safe(dict(vars(cfg)))

    def config_from_dict(self, d: dict[str, Any]) -> Any:
        """Inverse of `config_to_dict` (used by `rankwise eval` to rebuild a run's model)."""
        names = {f.name for f in dataclasses.fields(self.config_class)}
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return self.config_class(**kwargs)


def json_safe(value: Any) -> Any:
    """Tuples → lists, non-JSON leaves → str, recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class DenseMethod(Method):
    """Plain (dense) training: no model rewrite, no hooks, the trainer's SGD."""

    name = "dense"
    config_class = DenseConfig
    help = "plain dense training (the baseline)"
