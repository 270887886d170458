"""Build any model from one spec string: `build_model(spec, **kw)`.

Specs:
- `resnet20`, `vgg16`, ... — the rankwise zoo (`create_model`);
- `tv:NAME` — `torchvision.models.get_model(NAME, weights=None, **kw)` (random weights);
- `timm:NAME` — `timm.create_model(NAME, pretrained=False, **kw)`;
- `hf:NAME_OR_PATH` — Hugging Face transformers: a local folder with `config.json` (its weights
  are loaded when the folder holds them), or a hub name whose config is in the local cache or
  can be downloaded; built from the config with random weights. `kw` overrides config fields
  (e.g. `n_layer=2`); `task=` picks the head (`base`, `causal-lm`, `masked-lm`,
  `sequence-classification`, `image-classification`; default: the config's first
  architecture, else the bare model);
- `package.module:factory` — any importable callable, called as `factory(**kw)`.

The model records its spec (`recorded_arch`), so `rankwise.save` can write it to `model.json` and
`rankwise.load` rebuilds it without being told the architecture again. Optional libraries are
imported only for their prefix; a missing one raises `ConfigError` with the pip command.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankwise.errors import ConfigError
from rankwise.models.registry import ARCH_ATTR, record_arch
from rankwise.nested import map_tensors

PREFIXES = ("tv", "timm", "hf")
HF_TASKS = {
    "base": "AutoModel",
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "image-classification": "AutoModelForImageClassification",
}
_EXTRA = {"tv": "vision", "timm": "vision", "hf": "hf"}


def split_spec(spec: str) -> tuple[str, str]:
    """`("zoo" | "tv" | "timm" | "hf" | "entry", rest)` for a model spec string."""
    spec = str(spec).strip()
    head, sep, rest = spec.partition(":")
    if not sep:
        return "zoo", spec
    if head in PREFIXES:
        if not rest:
            raise ConfigError(f"model spec {spec!r}: name missing after '{head}:', e.g. "
                              f"{head}:{'resnet50' if head != 'hf' else 'gpt2'}")
        return head, rest
    if not head or not rest or not all(p.isidentifier() for p in head.split(".")):
        raise ConfigError(f"model spec {spec!r}: expected a zoo name (resnet20), tv:NAME, "
                          "timm:NAME, hf:NAME_OR_PATH or package.module:factory")
    return "entry", spec


def _import(module: str, prefix: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"model spec '{prefix}:...' needs {module} ({e}); install it with "
                          f"pip install 'rankwise[{_EXTRA[prefix]}]'") from e
    except RuntimeError as e:  # e.g. a torchvision build that does not match the torch build
        extra = _EXTRA[prefix]
        raise ConfigError(f"import {module} failed ({e}); install the {module.split('.')[0]} "
                          "release built "
                          f"for torch {torch.__version__} (pip install 'rankwise[{extra}]')") from e


def _torchvision(name: str, kw: dict[str, Any]) -> nn.Module:
    tv = _import("torchvision.models", "tv")
    try:
        return tv.get_model(name, weights=None, **kw)
    except ValueError as e:
        raise ConfigError(f"tv:{name}: {e}; see torchvision.models.list_models()") from e


def _timm(name: str, kw: dict[str, Any]) -> nn.Module:
    timm = _import("timm", "timm")
    try:
        return timm.create_model(name, pretrained=False, **kw)
    except RuntimeError as e:  # timm raises RuntimeError('Unknown model ...')
        raise ConfigError(f"timm:{name}: {e}; see timm.list_models()") from e


def _hf_head(transformers: Any, config: Any, task: str | None) -> Any:
    if task is not None:
        if task not in HF_TASKS:
            raise ConfigError(f"hf task {task!r}: choose one of {sorted(HF_TASKS)}")
        return getattr(transformers, HF_TASKS[task])
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return transformers.AutoModel


def _has_weights(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json",
                                                  "pytorch_model.bin"))


def _huggingface(name: str, kw: dict[str, Any]) -> nn.Module:
    transformers = _import("transformers", "hf")
    task = kw.pop("task", None)
    folder = Path(name).expanduser()
    local = folder.is_dir()
    if local and not (folder / "config.json").is_file():
        raise ConfigError(f"hf:{name}: folder has no config.json; save one with "
                          "config.save_pretrained(folder)")
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder) if local else name, **kw)
    except OSError as e:
        raise ConfigError(f"hf:{name}: no config found locally or in the Hugging Face cache, and "
                          f"it could not be downloaded ({str(e).splitlines()[0]}); pass a local "
                          "folder holding config.json (hf:path/to/folder)") from e
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"hf:{name}: cannot read its config with {kw} ({e})") from e
    try:
        cls = _hf_head(transformers, config, task)
    except ImportError as e:  # transformers' lazy modules fail here, e.g. on a broken torchvision
        raise ConfigError(f"hf:{name}: cannot import the model class ({e}; cause: "
                          f"{e.__cause__}); check the transformers / torchvision installation"
                          ) from e
    if local and _has_weights(folder):
        return cls.from_pretrained(str(folder), config=config)
    if hasattr(cls, "from_config"):
        return cls.from_config(config)
    return cls(config)


def _entry_point(spec: str, kw: dict[str, Any]) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"model spec {spec!r}: cannot import {module_name} ({e}); is it "
                          "installed or on PYTHONPATH?") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model spec {spec!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model spec {spec!r}: {attr} is not callable")
    model = obj(**kw)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model spec {spec!r}: the factory returned {type(model).__name__}, "
                          "not an nn.Module")
    return model


def build_model(spec: str, seed: int | None = None, **kw: Any) -> nn.Module:
    """The model named by `spec` (see the module docstring), built with keyword options `kw`.

    `seed`: seed of the random initialisation (the global torch RNG is left untouched); None
    draws from the global RNG. Records `(spec, kw)` on the model for `rankwise.save`. Raises
    `ConfigError` for an unknown spec, a missing optional library or a failing factory.
    """
    kind, name = split_spec(spec)
    kwargs = dict(kw)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(int(seed))
        if kind == "zoo":
            from rankwise.models.registry import create_model

            model = create_model(name, **kw)
        elif kind == "tv":
            model = _torchvision(name, kw)
        elif kind == "timm":
            model = _timm(name, kw)
        elif kind == "hf":
            model = _huggingface(name, dict(kw))
        else:
            model = _entry_point(name, kw)
    record_arch(model, str(spec).strip(), kwargs)
    return model


def recorded_arch(model: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """`(spec, kwargs)` that `build_model` (or `record_arch`) attached to `model`, or None."""
    rec = getattr(model, ARCH_ATTR, None)
    if not isinstance(rec, dict) or not rec.get("arch"):
        return None
    return str(rec["arch"]), dict(rec.get("arch_kwargs") or {})


def default_input_shape(spec: str, model: nn.Module | None = None) -> tuple[int, ...] | None:
    """The input shape (no batch dim) a spec's model is built for, or None when unknown.

    Zoo: `rankwise.models.default_input_shape`; tv: (3, 224, 224) (299 for inception_v3);
    timm: the model's `pretrained_cfg["input_size"]`; hf vision configs: (C, image_size,
    image_size); hf text models: `(16,)` token ids (see `example_inputs`).
    """
    kind, name = split_spec(spec)
    if kind == "zoo":
        from rankwise.models.registry import default_input_shape as zoo_shape

        return tuple(zoo_shape(name))
    if kind == "tv":
        return (3, 299, 299) if name.startswith("inception") else (3, 224, 224)
    if kind == "timm" and model is not None:
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
        return tuple(int(s) for s in size) if size else (3, 224, 224)
    if kind == "hf" and model is not None:
        cfg = getattr(model, "config", None)
        if cfg is not None and getattr(cfg, "image_size", None):
            size = cfg.image_size
            hw = (size, size) if isinstance(size, int) else tuple(size)
            return (int(getattr(cfg, "num_channels", 3)), *hw)
        return (16,)
    return None


def is_token_model(model: nn.Module) -> bool:
    """True for Hugging Face models whose main input is `input_ids`."""
    name = getattr(model, "main_input_name", None)
    return name == "input_ids"


def example_inputs(model: nn.Module, input_shape: tuple[int, ...], batch: int = 1,
                   device: torch.device | str | None = None) -> Any:
    """Inputs of one forward pass: `{"input_ids": zeros (batch, T)}` for token models
    (`input_shape = (T,)`), `{main_input_name: zeros}` for other HF models, else zeros
    `(batch, *input_shape)` in the model's floating dtype."""
    p = next(iter(model.parameters()), None)
    dev = device if device is not None else (p.device if p is not None else "cpu")
    if is_token_model(model):
        return {"input_ids": torch.zeros((batch, int(input_shape[-1])), dtype=torch.long,
                                         device=dev)}
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    x = torch.zeros((batch, *[int(s) for s in input_shape]), dtype=dtype, device=dev)
    key = getattr(model, "main_input_name", None)
    return {key: x} if isinstance(key, str) else x


def random_inputs(inputs: Any, model: nn.Module, seed: int) -> Any:
    """`inputs` with float tensors drawn from N(0, 1) and token ids uniform over the vocabulary
    (zeros would make a BatchNorm net's output its classifier bias, hiding any deviation)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 2))

    def one(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            return torch.randn(t.shape, generator=gen, dtype=t.dtype)
        return torch.randint(0, vocab, t.shape, generator=gen, dtype=t.dtype)

    return map_tensors(one, inputs)
