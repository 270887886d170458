"""What a run's `config.json` records and how it is checked on `--resume`.

`dataset_spec` / `load_split`: the data of a run, stored as `{"name", "kwargs", "limit_train",
"limit_test"}` so `rankwise eval` and the benchmarks rebuild the same splits.
`model_kwargs_for`: `create_model` kwargs matching the data. `resume_mismatches`: which settings
of a new invocation differ from the stored run (only those that change the result count).
"""

from __future__ import annotations

import inspect
from typing import Any

from rankwise.errors import ConfigError

# TrainConfig fields that do not change the trained weights (or may legitimately change when a
# run is continued: `epochs` extends it); everything else must match the stored run.
BOOKKEEPING = frozenset({"epochs", "quiet", "log_every", "tensorboard", "num_threads",
                         "eval_every", "eval_batch_size", "check_finite_every", "compile",
                         "device"})
COMPARED = ("model", "dataset", "method", "method_config", "input_shape")


def dataset_spec(data: Any, model: str | None = None) -> dict[str, Any]:
    """`{"name", "kwargs", "limit_train", "limit_test"}` of a `DataConfig`; `synthetic` uses the
    model's default input shape so that e.g. lenet5 gets 1x28x28 images."""
    kwargs: dict[str, Any] = {}
    if data.dataset == "synthetic":
        shape = [3, 32, 32]
        if model is not None:
            from rankwise.models import default_input_shape

            shape = list(default_input_shape(model))
        kwargs = {"size": data.synthetic_size, "shape": shape, "num_classes": 10, "seed": 0}
    return {"name": data.dataset, "kwargs": kwargs, "limit_train": data.limit_train,
            "limit_test": data.limit_test}


def load_split(spec: dict[str, Any], train: bool, data_dir: str | None = None,
               download: bool | None = None, limit: int | None = None):
    """One split of the dataset described by `spec` (see `dataset_spec`), cut to `limit`."""
    from rankwise.data import load_dataset

    kwargs = dict(spec.get("kwargs") or {})
    if "shape" in kwargs:
        kwargs["shape"] = tuple(kwargs["shape"])
    data = load_dataset(spec["name"], train, data_dir=data_dir, download=download, **kwargs)
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit-train/--limit-test must be >= 1, got {limit}")
        data = data.subset(slice(0, limit))
    return data


def model_kwargs_for(name: str, data, width: int | None) -> dict[str, Any]:
    """`create_model` kwargs matching `data`: classes, channels, `image_size` (if the model
    takes one and the images are not its default size) and `width`."""
    from rankwise.models import MODELS, default_input_shape

    c, h, w = data.shape
    kwargs: dict[str, Any] = {"num_classes": int(data.num_classes), "in_channels": int(c)}
    key = name.lower().replace("-", "").replace("_", "")
    accepted = set(inspect.signature(MODELS[key][0]).parameters) if key in MODELS else set()
    if (h, w) != tuple(default_input_shape(name)[1:]) and "image_size" in accepted:
        if h != w:
            raise ConfigError(f"model {name!r} takes square images; dataset gives {h}x{w}")
        kwargs["image_size"] = int(h)
    if width is not None:
        kwargs["width"] = int(width)
    return kwargs


def diff_settings(where: str, old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any],
          skip: frozenset[str] = frozenset()) -> list[str]:
    """Keys whose values differ; a key only in `new` counts only when it is not its default
    (a field added since the run started), a key only in `old` never (renamed bookkeeping)."""
    out = []
    for k in sorted(set(new) - skip):
        if k in old:
            if old[k] != new[k]:
                out.append(f"{where}.{k}: run has {old[k]!r}, now {new[k]!r}")
        elif k in defaults and new[k] != defaults[k]:
            out.append(f"{where}.{k}: run has the default {defaults[k]!r}, now {new[k]!r}")
    return out


def resume_mismatches(stored: dict[str, Any], new: dict[str, Any],
                      train_defaults: dict[str, Any],
                      method_defaults: dict[str, Any]) -> list[str]:
    """Settings of `new` (a config.json dict) that differ from `stored` and change results."""
    out = diff_settings("train", stored.get("train") or {}, new["train"], train_defaults,
                        BOOKKEEPING)
    for key in COMPARED:
        old, now = stored.get(key), new.get(key)
        if key == "method_config" and isinstance(old, dict) and isinstance(now, dict):
            out += diff_settings("method_config", old, now, method_defaults)
        elif key == "dataset" and isinstance(old, dict) and isinstance(now, dict):
            out += diff_settings("dataset", old, now, {})
        elif old != now and not (old is None and key != "method"):
            out.append(f"{key}: run has {old!r}, now {now!r}")
    return out


__all__ = ["BOOKKEEPING", "dataset_spec", "diff_settings", "load_split", "model_kwargs_for",
           "resume_mismatches"]
