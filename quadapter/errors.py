"""Errors a user can fix: the CLI prints their message alone, without a traceback.

Anything raised as a ``UserError`` must say what is wrong (key, value, file) and how to fix it;
every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(RuntimeError):
    """Bad input or a failed run whose message is the whole story (config, data, model, training)."""


class ConfigError(UserError, ValueError):
    """A composed config value that is wrong: names the key, the bad value and the allowed values."""
