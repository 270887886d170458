"""Exception types. Every message names the layer (or file) and says how to fix it."""

from __future__ import annotations


class RankwiseError(Exception):
    """Base class of every error rankwise raises on purpose."""


class RankError(RankwiseError, ValueError):
    """A rank is invalid for a layer: below 1, above the format's limit, or the wrong shape."""


class UnsupportedLayerError(RankwiseError, TypeError):
    """A layer (type or configuration) that a format cannot factorize."""


class CheckpointError(RankwiseError):
    """A saved model or checkpoint is corrupt, truncated or does not match the architecture."""


class DatasetNotFoundError(RankwiseError, FileNotFoundError):
    """A dataset was not found in any searched location."""


class DatasetIntegrityError(RankwiseError):
    """A dataset file has the wrong checksum or format."""


class ConfigError(RankwiseError, ValueError):
    """A configuration value is out of range (e.g. energy outside (0, 1], period < 1)."""


class NonFiniteLossError(RankwiseError, FloatingPointError):
    """Training produced a NaN/Inf loss; the last good checkpoint is kept."""


class EmulatedPrecisionWarning(UserWarning):
    """bf16 was asked for on a CPU without bfloat16 instructions: slower than fp32."""


class LatencyTargetWarning(UserWarning):
    """A latency budget's target is out of reach: the fastest plan the table allows is used."""
