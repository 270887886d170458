"""The pre-train paradigm: decompose a trained model, evaluate, fine-tune at a small lr.

`decompose_and_finetune` measures test accuracy at three stages: the trained dense model
("before"), right after `surgery.decompose` ("decomposed") and after fine-tuning the factorized
model with `Trainer` ("finetuned"). It is the baseline every low-rank training method must beat
(`/work/shared/docs/methods.md`, "Pre-train"), used by `rankwise decompose --finetune N` and by
the benchmarks. Sits beside `rankwise/methods/`: it imports `surgery` and `train`, and only
`cli`/`bench` import it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankwise.errors import ConfigError
from rankwise.surgery.decompose import decompose
from rankwise.train import Hook, TrainConfig, Trainer, evaluate

FINETUNE_DIR = "finetune"
STAGES = ("before", "decomposed", "finetuned")

__all__ = ["FINETUNE_DIR", "STAGES", "decompose_and_finetune", "default_finetune_config"]


def default_finetune_config(epochs: int = 1, **overrides: Any) -> TrainConfig:
    """The fine-tuning recipe: SGD lr 0.01 (momentum 0.9, wd 1e-4), cosine to 0 over `epochs`,
    crop+flip augmentation; `overrides` are any other `TrainConfig` fields."""
    fields: dict[str, Any] = {"epochs": max(int(epochs), 1), "lr": 0.01, "schedule": "cosine"}
    fields.update(overrides)
    return TrainConfig(**fields)


def decompose_and_finetune(model: nn.Module, train_data, test_data, format: str | None = "tucker2",
                           rank: Any = "energy:0.9", epochs: int = 1,
                           train_cfg: TrainConfig | None = None,
                           out_dir: str | os.PathLike[str] | None = None, *,
                           resume: bool = False, meta: dict[str, Any] | None = None,
                           hooks: Sequence[Hook] = (), eval_train: bool = False,
                           **decompose_kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Decompose `model`, then fine-tune it `epochs` epochs; returns `(model, report)`.

    `train_data` / `test_data`: `ImageDataset`s (uint8 (N, C, H, W) images). `format` / `rank` /
    `decompose_kwargs` go to `rankwise.surgery.decompose` (without `example_inputs`, the input
    shape is `train_data.shape`; `inplace` defaults to False, so the caller's `model` keeps its
    weights unless asked; it is moved to the config's device). `train_cfg` (default
    `default_finetune_config()`: lr 0.01, cosine) sets the fine-tuning
    recipe; its `epochs` is replaced by `epochs`, its `device` and `eval_batch_size` are also
    used for the evaluations. The trainer's run directory is `out_dir/finetune` (checkpoint per
    epoch, `metrics.jsonl`, the fine-tuned weights); `resume=True` continues it from its
    `checkpoint.pt` (the decomposition is recomputed and must give the same ranks, which it does
    for the same weights, rank policy and seed). `meta` goes to the `Trainer` (`model`:
    `{"name", "kwargs"}` makes `rankwise.load(out_dir/finetune)` work); `hooks` are trainer hooks.
    `epochs=0` skips fine-tuning (then `out_dir` may be None).

    The report is the `DecomposeReport.to_dict()` (`format`, `linear_format`, `policy`,
    `totals`, `rows`) plus `accuracy` and `loss`: `{"before", "decomposed", "finetuned"}` test
    top-1 fractions / mean cross-entropy (nats) — `finetuned` is None when `epochs=0` —,
    `train_accuracy` likewise on the un-augmented training set when `eval_train`, `test_samples`,
    `finetune`: `{"epochs", "run_dir", "train_config", "metrics"}` (None when `epochs=0`),
    `decompose_seconds` / `finetune_seconds` (wall time of this call's surgery / `fit`), and the
    flat aliases `acc_before`, `acc_after_decompose`, `acc_after_finetune`.
    The returned model is the fine-tuned factorized model, in eval mode, on the config's device.
    """
    if test_data is None:
        raise ConfigError("decompose_and_finetune: test_data is None; the three accuracies need "
                          "a test split (pass e.g. load_dataset(name, train=False))")
    if epochs < 0:
        raise ConfigError(f"decompose_and_finetune: epochs={epochs}; pass 0 (no fine-tuning) "
                          "or more")
    if epochs > 0 and out_dir is None:
        raise ConfigError("decompose_and_finetune: fine-tuning needs out_dir (the trainer writes "
                          "its checkpoints to out_dir/finetune)")
    cfg = train_cfg if train_cfg is not None else default_finetune_config(epochs)
    if epochs > 0:
        cfg = dataclasses.replace(cfg, epochs=int(epochs))
    device = torch.device(cfg.device)
    if decompose_kwargs.get("example_inputs") is None:
        decompose_kwargs.setdefault("input_shape", tuple(train_data.shape))
    decompose_kwargs.setdefault("inplace", False)

    def measure(m: nn.Module) -> tuple[dict[str, float], float | None]:
        test = evaluate(m, test_data, cfg.eval_batch_size, device)
        train_acc = (evaluate(m, train_data, cfg.eval_batch_size, device)["acc"]
                     if eval_train else None)
        return test, train_acc

    model = model.to(device)
    before, train_before = measure(model)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # randomized decompositions (CP) repeat on resume
        torch.manual_seed(cfg.seed)
        model, dec_report = decompose(model, format=format, rank=rank, **decompose_kwargs)
    decompose_seconds = time.perf_counter() - start
    model = model.to(device)
    decomposed, train_decomposed = measure(model)

    finetuned: dict[str, float] | None = None
    train_finetuned: float | None = None
    finetune_seconds = 0.0
    finetune_info: dict[str, Any] | None = None
    if epochs > 0:
        run_dir = Path(out_dir) / FINETUNE_DIR  # type: ignore[arg-type]
        trainer = Trainer(model, cfg, train_data, test_data, run_dir, hooks=hooks,
                          meta=dict(meta or {}))
        start = time.perf_counter()
        metrics = trainer.fit(resume=resume)
        finetune_seconds = time.perf_counter() - start
        model = trainer.model
        finetuned, train_finetuned = measure(model)
        finetune_info = {"epochs": int(epochs), "run_dir": str(run_dir),
                         "train_config": cfg.to_dict(), "metrics": metrics}
    model.eval()

    report = dec_report.to_dict()
    report["accuracy"] = {"before": before["acc"], "decomposed": decomposed["acc"],
                          "finetuned": None if finetuned is None else finetuned["acc"]}
    report["loss"] = {"before": before["loss"], "decomposed": decomposed["loss"],
                      "finetuned": None if finetuned is None else finetuned["loss"]}
    if eval_train:
        report["train_accuracy"] = {"before": train_before, "decomposed": train_decomposed,
                                    "finetuned": train_finetuned}
    report["test_samples"] = int(before["n"])
    report["finetune"] = finetune_info
    report["decompose_seconds"] = decompose_seconds
    report["finetune_seconds"] = finetune_seconds
    # flat aliases of `accuracy` (read by `rankwise.bench.quick`)
    report["acc_before"] = report["accuracy"]["before"]
    report["acc_after_decompose"] = report["accuracy"]["decomposed"]
    report["acc_after_finetune"] = report["accuracy"]["finetuned"]
    return model, report
