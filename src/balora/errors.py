"""Errors that tell the user what to change.

Every error raised on bad user input is a ``BaloraError`` (a ``ValueError``), so the command line can
print it as one line and exit with a known code, while Python users can catch it like any ValueError.
"""

from __future__ import annotations


class BaloraError(ValueError):
    """Bad input or state that the user can fix; the message says how."""


class ConfigError(BaloraError):
    """An option, a combination of options or a config key is invalid."""


class DataError(BaloraError):
    """A data set is missing, empty, or has columns or labels that do not fit."""


class ModelError(BaloraError):
    """A model or adapter directory is missing, partial or does not fit the base model."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and the term."""


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; ``--resume`` continues it."""
