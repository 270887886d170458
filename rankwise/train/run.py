"""`run(RunConfig) -> dict`: one training run, as `rankwise train` and the benchmarks do it.

    from rankwise import run, RunConfig
    from rankwise.train.config import DataConfig, ModelConfig, TrainConfig
    summary = run(RunConfig(ModelConfig("resnet20"), DataConfig("cifar10"),
                            TrainConfig(epochs=164, milestones=[82, 122]),
                            method="trp", method_config={"energy": 0.9}, out="runs/r20-trp"))

Sequence: validate every option → load the data (a missing dataset fails here, before anything
is written) → lock `out` and apply the run-directory rules (`rundir.prepare_run_dir`; on
`resume` the stored `config.json` must match the settings that change results) → build the
model (on the meta device for methods that replace every layer, e.g. ELRT) → the method's
`prepare_model` → `Trainer.fit` → the method's `finalize` → `summary.json`. With `overwrite`
the new run is built beside `out` and swapped in only once it has finished.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rankwise import options
from rankwise.errors import ConfigError
from rankwise.io.export_precision import cpu_features
from rankwise.train.config import DataConfig, ModelConfig, TrainConfig, check_device
from rankwise.train.init_weights import init_source, load_init_weights
from rankwise.train.logger import dumps
from rankwise.train.recipes import get_recipe
from rankwise.train.rundir import RunLock, prepare_run_dir
from rankwise.train.runspec import (
    dataset_spec,
    load_split,
    model_kwargs_for,
    resume_mismatches,
)

SUMMARY = "summary.json"


@dataclass
class RunConfig:
    """Everything one training run needs. `method_config`: the method's config dataclass, a
    dict of its options (unknown keys refused) or None for its defaults."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    method: str = "dense"
    method_config: Any = None
    out: str | os.PathLike[str] = "runs/run"
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise ConfigError("RunConfig: resume and overwrite contradict (--resume continues "
                              f"the run in {self.out}, --overwrite replaces it); give one")


def method_config(method: Any, value: Any) -> Any:
    """`value` as `method`'s config dataclass (None → defaults, dict → its declared options,
    unknown keys refused; validated)."""
    cls = method.config_cls
    if value is None:
        return cls()
    if isinstance(value, cls):
        options.validate(value)
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"method_config of --method {method.name} must be a {cls.__name__} "
                          f"or a dict, got {type(value).__name__}")
    return method.config_from_dict(value)


def method_config_dict(method: Any, cfg: Any) -> dict[str, Any]:
    return method.config_to_dict(cfg)


def _version() -> str:
    import rankwise

    return rankwise.__version__


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _check_resume(out: Path, meta: dict[str, Any], train: TrainConfig, method: Any) -> None:
    """ConfigError listing every result-changing setting that differs from the stored run."""
    path = out / "config.json"
    if not path.is_file():
        return  # the checkpoint's own train config is still checked by the trainer
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); cannot check the resume") from e
    train.keep_run_precision(stored.get("train") or {})
    new = {"train": train.to_dict(), **meta}
    defaults = method_config_dict(method, method_config(method, None))
    bad = resume_mismatches(stored, new, TrainConfig().to_dict(), defaults)
    if bad:
        raise ConfigError(f"--resume {out}: the stored run differs in {len(bad)} setting(s): "
                          + "; ".join(bad) + ". Resume with the run's settings, or start a new "
                          "run (--overwrite or another --out)")


def run(config: RunConfig) -> dict[str, Any]:
    """Train as described by `config`; returns the summary (also written to `summary.json`).

    Raises ConfigError (bad options, occupied `out`), DatasetNotFoundError, CheckpointError
    (bad resume) or NonFiniteLossError (a diverged run) — nothing is overwritten on failure.
    """
    from rankwise.models import create_model
    from rankwise.train.trainer import Trainer

    train, data, model_cfg = config.train, config.data, config.model
    for part in (train, data, model_cfg):
        part.__post_init__()  # re-validate: fields may have been set after construction
    check_device(train.device)
    method = get_recipe(config.method)
    mcfg = method_config(method, config.method_config)
    out = Path(config.out)
    if config.overwrite and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--overwrite is not supported under torchrun; delete the old run or "
                          "choose another --out")

    spec = dataset_spec(data, model_cfg.name)
    train_data = load_split(spec, True, data.data_dir, data.download_mode, data.limit_train)
    test_data = load_split(spec, False, data.data_dir, data.download_mode, data.limit_test)
    kwargs = model_kwargs_for(model_cfg.name, train_data, model_cfg.width)
    model_meta: dict[str, Any] = {"name": model_cfg.name, "kwargs": kwargs}
    if model_cfg.init is not None:
        if getattr(method, "builds_on_meta", False):
            raise ConfigError(f"--init: method {method.name!r} builds its factorized layers "
                              "from scratch and never holds the dense weights; drop --init, or "
                              "decompose the trained model with `rankwise decompose`")
        from rankwise.io.model_file import file_sha256

        model_meta["init"] = {"path": str(model_cfg.init),
                              "sha256": file_sha256(init_source(model_cfg.init))}
    meta = {"model": model_meta,
            "input_shape": list(train_data.shape), "dataset": spec, "method": method.name,
            "method_config": method_config_dict(method, mcfg), "rankwise_version": _version()}

    lock = RunLock(out).acquire() if _is_main() else None
    try:
        mode = prepare_run_dir(out, config.resume, config.overwrite) if _is_main() else \
            ("resume" if config.resume else "fresh")
        if mode == "resume" and _is_main():
            _check_resume(out, meta, train, method)
        if mode == "overwrite":
            from rankwise.io.atomic import atomic_dir

            swap = atomic_dir(out, replace_if=lambda _: True)
        else:
            swap = contextlib.nullcontext(out)
        with swap as write_dir:
            return _train(create_model, Trainer, method, mcfg, model_cfg, kwargs, train,
                          train_data, test_data, Path(write_dir), out, meta, mode == "resume")
    finally:
        if lock is not None:
            lock.release()


def _train(create_model, trainer_cls, method, mcfg, model_cfg: ModelConfig,
           kwargs: dict[str, Any], train: TrainConfig, train_data, test_data, write_dir: Path,
           out: Path, meta: dict[str, Any], resume: bool) -> dict[str, Any]:
    torch.manual_seed(train.seed)
    if getattr(method, "builds_on_meta", False):
        # Methods that replace layers before training (ELRT) never need the dense weights:
        # build the base on the meta device so they are never allocated.
        with torch.device("meta"):
            model = create_model(model_cfg.name, **kwargs)
    else:
        model = create_model(model_cfg.name, **kwargs)
        if model_cfg.init is not None and not resume:  # a resumed run has its checkpoint
            load_init_weights(model, model_cfg.init, meta["model"]["init"]["sha256"])
    model = method.prepare_model(model, mcfg, train_data.shape)
    trainer = trainer_cls(model, train, train_data, test_data, write_dir,
                          hooks=method.hooks(mcfg),
                          optimizer=method.make_optimizer(model, train, mcfg), meta=meta,
                          lock=False)
    metrics = trainer.fit(resume=resume)
    report = method.finalize(trainer, mcfg)
    summary = {"out": str(out), "model": model_cfg.name, "dataset": meta["dataset"]["name"],
               "method": method.name,
               "params": sum(p.numel() for p in trainer.model.parameters()),
               "threads": trainer.threads, "machine": cpu_features(),
               **metrics, "method_report": report}
    summary = json.loads(dumps(summary))
    if trainer.is_main:
        from rankwise.io.atomic import atomic_write

        atomic_write(write_dir / SUMMARY, dumps(summary, indent=2).encode())
    return summary


__all__ = ["SUMMARY", "RunConfig", "method_config", "method_config_dict", "run"]
