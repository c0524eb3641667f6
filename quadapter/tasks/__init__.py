"""Tasks: what a run measures, one module per task (DESIGN §2); ``task.name`` picks one.

``lm``: language modelling, perplexity on token streams (``tasks.lm``); ``glue``: GLUE sequence
classification and STS-B regression (``tasks.glue``). Every task implements ``tasks.base.Task``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from quadapter.errors import ConfigError
from quadapter.tasks.base import DIRECTIONS, Task
from quadapter.tasks.glue import Glue
from quadapter.tasks.lm import LanguageModelling

TASKS: dict[str, type[Task]] = {"lm": LanguageModelling, "glue": Glue}

__all__ = ["DIRECTIONS", "TASKS", "Task", "task_class"]


def task_class(cfg: DictConfig) -> type[Task]:
    """The task of a composed config (a config without ``task`` is a language-modelling one)."""
    name = cfg.task.name if "task" in cfg else "lm"
    if name not in TASKS:
        raise ConfigError(f"task.name={name!r} is invalid: expected one of {', '.join(TASKS)}")
    return TASKS[name]
