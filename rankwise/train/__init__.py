"""Training: `Trainer` (hooks, per-iteration lr schedule, checkpoint/resume, DDP), `evaluate`,
the option declarations (`TrainConfig`, `DataConfig`, `ModelConfig`) and `rankwise.run`
(`rankwise.train.run.run(RunConfig)`, what `rankwise train` and the benchmarks call)."""

from rankwise.analysis.accuracy import evaluate
from rankwise.errors import NonFiniteLossError
from rankwise.train.config import DataConfig, ModelConfig, TrainConfig
from rankwise.train.hooks import Hook
from rankwise.train.logger import read_metrics
from rankwise.train.trainer import Trainer

__all__ = ["DataConfig", "Hook", "ModelConfig", "NonFiniteLossError", "TrainConfig", "Trainer",
           "evaluate", "read_metrics"]
