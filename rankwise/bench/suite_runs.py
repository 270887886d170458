"""Training runs of benchmark cells: `RunConfig`s named by the hash of their settings, reused
only when the run directory's stored `config.json` matches (`ensure_run`)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any


def run_config(cfg: Any, p: dict[str, Any], method: str, runs: Path,
               options: dict[str, Any] | None = None, key: str | None = None):
    """The `RunConfig` of a cell's training run, in `runs/<tag>-<hash of its settings>`.

    `key` selects `cfg.method_options` / `cfg.method_train` (default `method`); `options` are
    extra method options (e.g. ELRT's format and rank budget)."""
    from rankwise.train.config import DataConfig, ModelConfig, TrainConfig
    from rankwise.train.run import RunConfig

    key = key or method
    fields = {"epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
              "schedule": cfg.schedule, "milestones": list(cfg.milestones), "seed": p["seed"],
              "quiet": True, "device": "cpu", "num_threads": cfg.threads}
    # the suite's training options, then the method's (which may also override lr, epochs, ...)
    train = TrainConfig(**{**fields, **cfg.train_options, **cfg.method_train.get(key, {})})
    data = DataConfig(cfg.dataset, limit_train=cfg.limit_train, limit_test=cfg.limit_test,
                      **cfg.data_options)
    model = ModelConfig(p["model"], width=p["model_kwargs"].get("width"))
    mopts = {**cfg.method_options.get(key, {}), **(options or {})}
    settings = {"model": dataclasses.asdict(model), "data": dataclasses.asdict(data),
                "train": {k: v for k, v in train.to_dict().items() if k not in RUN_BOOKKEEPING},
                "method": method, "method_options": mopts, "rankwise": rankwise_version()}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    tag = key.replace(":", "-").replace("@", "_")
    return RunConfig(model=model, data=data, train=train, method=method, method_config=mopts,
                     out=runs / f"{tag}-{digest.hexdigest()[:10]}")


# TrainConfig fields that do not change a run's result (left out of its directory hash).
RUN_BOOKKEEPING = ("quiet", "log_every", "tensorboard", "num_threads", "eval_every",
                   "eval_batch_size", "check_finite_every", "device")


def _stored_matches(out: Path, rc) -> bool:
    """True when `out/config.json` records the same result-changing settings as `rc`."""
    from rankwise.train.recipes import get_recipe
    from rankwise.train.run import method_config, method_config_dict
    from rankwise.train.runspec import dataset_spec

    try:
        stored = json.loads((out / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    method = get_recipe(rc.method)
    train = {k: v for k, v in rc.train.to_dict().items() if k not in RUN_BOOKKEEPING}
    old_train = {k: v for k, v in (stored.get("train") or {}).items() if k not in RUN_BOOKKEEPING}
    return (old_train == train and stored.get("method") == method.name
            and stored.get("dataset") == dataset_spec(rc.data, rc.model.name)
            and (stored.get("model") or {}).get("name") == rc.model.name
            and (stored.get("model") or {}).get("kwargs", {}).get("width") == rc.model.width
            and stored.get("method_config") == method_config_dict(
                method, method_config(method, rc.method_config))
            and stored.get("rankwise_version") == rankwise_version())


def rankwise_version() -> str:
    import rankwise

    return rankwise.__version__


def ensure_run(rc) -> dict[str, Any]:
    """`rankwise.run(rc)` unless `rc.out` holds a finished run with the same stored config;
    a killed run with the same config is resumed, anything else in `rc.out` replaced."""
    from rankwise.train.run import run

    out = Path(rc.out)
    summary = out / "summary.json"
    if summary.is_file() and _stored_matches(out, rc):
        return json.loads(summary.read_text())
    if (out / "checkpoint.pt").is_file() and _stored_matches(out, rc) and \
            not summary.is_file():
        rc = dataclasses.replace(rc, resume=True)
    elif out.is_dir() and any(out.iterdir()):
        rc = dataclasses.replace(rc, overwrite=True)
    with contextlib.redirect_stdout(io.StringIO()):
        return run(rc)


def train_seconds(run: Path) -> float:
    """Total training time of a run: the sum of its epochs' `time_s` in `metrics.jsonl`."""
    total = 0.0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "epoch":
            total += float(event.get("time_s", 0.0))
    return total


def load_run_splits(run: Path) -> tuple[Any, Any]:
    """The train/test splits a finished run used (its `config.json` dataset spec)."""
    from rankwise.train.runspec import load_split

    spec = json.loads((run / "config.json").read_text())["dataset"]
    return (load_split(spec, True, limit=spec.get("limit_train")),
            load_split(spec, False, limit=spec.get("limit_test")))


__all__ = ["RUN_BOOKKEEPING", "ensure_run", "load_run_splits", "run_config", "train_seconds"]
