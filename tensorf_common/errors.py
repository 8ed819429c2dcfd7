"""User-facing error types. The CLI prints any of these as one line and exits with status 2."""

from __future__ import annotations

from .config import ConfigError


class TensorfBenchError(Exception):
    """Base class of errors caused by bad input (files, options), not by bugs."""


class DatasetError(TensorfBenchError, ValueError):
    """A dataset file or field is missing or malformed. The message names the file and the field."""


class CheckpointError(TensorfBenchError, ValueError):
    """A checkpoint is missing, unreadable, unsafe or does not fit the model. Names file and key."""


class ConversionError(TensorfBenchError, ValueError):
    """A tensor does not map between the torch and JAX layouts. Names the key and both shapes."""


class TrainingError(TensorfBenchError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


USER_ERRORS: tuple[type[BaseException], ...] = (TensorfBenchError, ConfigError)
"""Exception types the CLI reports as a one-line error with exit status 2."""
