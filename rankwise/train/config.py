"""Run options declared once (`rankwise.options`): `TrainConfig` (the training loop),
`DataConfig` (which data) and `ModelConfig` (which zoo model). Their fields generate the
`rankwise train` flags, the validation, `config.json` and the Python constructors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rankwise import options
from rankwise.analysis.precision import TRAIN_PRECISIONS, resolve_precision
from rankwise.errors import ConfigError
from rankwise.options import option

SCHEDULES = ("step", "cosine", "none")


@dataclass
class TrainConfig:
    """Hyper-parameters and runtime switches of `Trainer`.

    Units: `lr` per step at full schedule value; `batch_size` is the *global* batch (split evenly
    over DDP ranks); `milestones` and `warmup_epochs` in epochs (the schedule itself is stepped
    per iteration); `log_every` in steps; `eval_every` in epochs (the last epoch is always
    evaluated). `precision="bf16"` runs forward passes under bfloat16 autocast (fp32 master
    weights, losses and method maths stay fp32); "auto" becomes "bf16" where the device computes
    bf16 natively and "fp32" elsewhere (`analysis.precision`), so `cfg.precision` is never "auto";
    `channels_last` (NHWC) acts everywhere (1.2–1.6× faster ELRT steps on CPU); `compile` wraps
    the forward in `torch.compile`. `deterministic=None` means "on for CPU, off for CUDA".
    `check_finite_every`: steps between NaN/Inf loss checks (each check is a device sync).
    """

    epochs: int = option(1, help="training epochs", low=1)
    batch_size: int = option(128, help="global batch (all DDP ranks)", low=1)
    lr: float = option(0.1, help="peak learning rate", low=0.0)
    momentum: float = option(0.9, help="SGD momentum", low=0.0, high=1.0, high_open=True)
    nesterov: bool = option(False, help="Nesterov momentum")
    weight_decay: float = option(1e-4, help="weight decay", low=0.0, flag="wd",
                                 aliases=("--weight-decay",))
    wd_on_bn_bias: bool = option(True, help="weight decay on BatchNorm parameters and biases "
                                             "(--no-wd-on-bn-bias: none on them)")
    schedule: str = option("step", help="lr schedule", choices=SCHEDULES)
    milestones: list[int] = option(help="epochs where the step schedule decays lr", low=1,
                                   default_factory=list)
    gamma: float = option(0.1, help="step decay factor", low=0.0, low_open=True)
    warmup_epochs: float = option(0.0, help="linear warm-up epochs", low=0.0, flag="warmup",
                                  aliases=("--warmup-epochs",))
    label_smoothing: float = option(0.0, help="label smoothing", low=0.0, high=1.0,
                                    high_open=True)
    seed: int = option(0, help="seed of init, shuffling and augmentation")
    device: str = option("cpu", help="cpu, cuda or cuda:N")
    precision: str = option("fp32", help="bf16: bfloat16 autocast on CPU or CUDA; auto: bf16 "
                                         "where the device computes it natively (AVX-512-bf16, "
                                         "AMX, Arm bf16, CUDA), else fp32",
                            choices=TRAIN_PRECISIONS)
    channels_last: bool = option(False, help="NHWC memory format (faster on CPU and CUDA)")
    compile: bool = option(False, help="torch.compile the model")
    augment: bool = option(True, help="crop/flip augmentation (--no-augment: none)")
    drop_last: bool = option(False, help="drop the last incomplete batch of an epoch")
    log_every: int = option(50, help="steps between metric lines", low=1)
    eval_every: int = option(1, help="epochs between test evaluations", low=1)
    eval_batch_size: int = option(512, help="batch size of the test evaluation", low=1)
    check_finite_every: int = option(1, help="steps between NaN/Inf loss checks", low=1)
    deterministic: bool | None = option(None, help="deterministic kernels (none: on for CPU, "
                                                   "off for CUDA)")
    num_threads: int | None = option(None, help="torch CPU threads (default: the cores of this "
                                                "process's affinity that are idle)", low=1)
    quiet: bool = option(False, help="no progress bar; one-line summary")
    tensorboard: bool = option(False, help="also log to OUT/tb")

    def __post_init__(self) -> None:
        if isinstance(self.milestones, tuple):
            self.milestones = list(self.milestones)
        self.validate()
        # not a field; kept through a re-validation: a resumed run may keep its own precision
        self.asked_auto = self.precision == "auto" or getattr(self, "asked_auto", False)
        if self.precision == "auto":
            check_device(self.device)
            self.precision = resolve_precision(self.precision, self.device)

    def keep_run_precision(self, stored: dict[str, Any]) -> None:
        """Resuming a run with "auto": continue in the precision the run was started in
        (`stored`: its train config), which "auto" may resolve otherwise on this machine."""
        old = stored.get("precision")
        if getattr(self, "asked_auto", False) and old in ("fp32", "bf16"):
            self.precision = old

    def validate(self) -> None:
        """Raise ConfigError naming the field and the accepted range."""
        options.validate(self)
        if self.nesterov and self.momentum == 0:
            raise ConfigError("TrainConfig: nesterov needs momentum > 0; set momentum=0.9")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field."""
        return options.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys raise ConfigError."""
        return options.from_dict(cls, d)


@dataclass
class DataConfig:
    """Which data a run trains on. `synthetic` uses the model's default input shape.

    `offline=True` never downloads; `download=True` fetches a missing dataset; neither leaves
    the choice to the data layer's default.
    """

    dataset: str = option(help="mnist, fashion-mnist, cifar10, cifar100 or synthetic")
    data_dir: str | None = option(None, help="where the dataset files are")
    download: bool = option(False, help="download a missing dataset")
    offline: bool = option(False, help="never download (fail if the data is missing)")
    limit_train: int | None = option(None, help="use the first N train samples", low=1)
    limit_test: int | None = option(None, help="use the first N test samples", low=1)
    synthetic_size: int = option(512, help="samples per split of --dataset synthetic", low=1)

    def __post_init__(self) -> None:
        options.validate(self)
        if self.download and self.offline:
            raise ConfigError("DataConfig: --download and --offline contradict; give one")

    @property
    def download_mode(self) -> bool | None:
        """False when offline, True when asked to download, None for the default."""
        return False if self.offline else (True if self.download else None)


@dataclass
class ModelConfig:
    """Which zoo model (`rankwise.models.create_model`) a run trains."""

    name: str = option(help="zoo name, e.g. resnet20 (rankwise.models)", flag="model")
    width: int | None = option(None, help="width multiplier/base width", low=1)
    init: str | None = option(None, help="start from these weights: a saved model or run "
                              "directory (model.json + model.safetensors) or a .safetensors file "
                              "of the same architecture (not with methods that build the "
                              "factorized layers themselves, e.g. elrt)")

    def __post_init__(self) -> None:
        options.validate(self)


def check_device(device: str) -> None:
    """ConfigError unless `device` exists here (e.g. `cuda` on a machine without CUDA)."""
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"--device {device!r} is not a device name ({e}); use cpu or cuda") \
            from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available on this machine; "
                              "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA "
                              "devices; pick a lower index")
    elif dev.type == "meta":
        raise ConfigError("--device meta cannot train; use cpu or cuda")


__all__ = ["SCHEDULES", "DataConfig", "ModelConfig", "TrainConfig", "check_device"]
