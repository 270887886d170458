"""Model registry: name -> (factory, default input shape (C, H, W)), one source file per family."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from rankwise.errors import ConfigError
from rankwise.models import mixer, resnet_cifar, resnet_imagenet, small, vgg

Factory = Callable[..., nn.Module]

MODELS: dict[str, tuple[Factory, tuple[int, int, int]]] = {
    **resnet_cifar.MODELS, **vgg.MODELS, **small.MODELS, **resnet_imagenet.MODELS,
    **mixer.MODELS,
}


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def _entry(name: str) -> tuple[Factory, tuple[int, int, int]]:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {list_models()}")
    return MODELS[key]


def default_input_shape(name: str) -> tuple[int, int, int]:
    """(C, H, W) the model is built for: (3, 32, 32) CIFAR models, (1, 28, 28) lenet5/smallcnn/
    mlp, (3, 224, 224) resnet18/50."""
    return _entry(name)[1]


ARCH_ATTR = "_rankwise_arch"


def record_arch(model: nn.Module, spec: str, kwargs: dict[str, Any] | None = None) -> None:
    """Attach `{"arch": spec, "arch_kwargs": kwargs}` to `model` (read by `recorded_arch`)."""
    object.__setattr__(model, ARCH_ATTR, {"arch": spec, "arch_kwargs": dict(kwargs or {})})


def create_model(name: str, num_classes: int = 10, in_channels: int | None = None,
                 **kw: Any) -> nn.Module:
    """Build model `name` with `num_classes` outputs.

    `in_channels`: input channels; None means the model's default (`default_input_shape(name)[0]`:
    1 for lenet5/smallcnn/mlp, 3 otherwise). Extra keyword arguments go to the family's factory
    (`width=` for resnet20..110/vgg16/smallcnn/resnet18/50, `hidden=` for mlp, `image_size=` ...).
    """
    factory, shape = _entry(name)
    accepted = set(inspect.signature(factory).parameters)
    unknown = sorted(set(kw) - accepted)
    if unknown:
        raise ConfigError(f"create_model({name!r}): unknown options {unknown}; accepted: "
                          f"{sorted(accepted - {'num_classes', 'in_channels'})}")
    if num_classes < 1:
        raise ConfigError(f"create_model({name!r}): num_classes={num_classes}, expected >= 1")
    channels = shape[0] if in_channels is None else int(in_channels)
    model = factory(num_classes=num_classes, in_channels=channels, **kw)
    record_arch(model, name, {"num_classes": num_classes, "in_channels": channels, **kw})
    return model
