"""Training: `Trainer` (hooks, per-iteration lr schedule, checkpoint/resume, DDP), `evaluate`."""

from rankwise.errors import NonFiniteLossError
from rankwise.train.config import TrainConfig
from rankwise.train.evaluate import evaluate
from rankwise.train.hooks import Hook
from rankwise.train.logger import read_metrics
from rankwise.train.trainer import Trainer

__all__ = ["Hook", "NonFiniteLossError", "TrainConfig", "Trainer", "evaluate", "read_metrics"]
