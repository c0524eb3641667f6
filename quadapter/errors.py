"""Errors a user can fix: the CLI prints their message alone, without a traceback.

Anything raised as a ``UserError`` must say what is wrong (key, value, file) and how to fix it;
every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(RuntimeError):
    """Bad input or a failed run whose message is the whole story (config, data, model, training)."""


class ConfigError(UserError, ValueError):
    """A composed config value that is wrong: names the key, the bad value and the allowed values."""


class TrainingError(UserError):
    """A run that cannot go on (non-finite loss or perplexity): names the step, the value and what to try."""


class RunInterrupted(Exception):
    """SIGINT/SIGTERM stopped a run; its checkpoints stay, so re-running the same command resumes it."""

    def __init__(self, message: str, signal_name: str = "SIGTERM"):
        super().__init__(message)
        self.signal_name = signal_name
