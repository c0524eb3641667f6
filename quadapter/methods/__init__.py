"""Methods: what happens to a loaded model before it is evaluated (``conf/method/*.yaml``).

A method is a function ``(RunContext) -> nn.Module`` returning the model to evaluate; the registry
maps ``method.name`` to it, so adding a method is one module and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger
from torch import nn
from transformers import PreTrainedTokenizerBase

from quadapter.methods import fp


@dataclass
class RunContext:
    """What a method may use: the composed config, the loaded model and the run's outputs."""

    cfg: DictConfig
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    run_dir: Path
    cache_dir: Path
    loggers: list[Logger] = field(default_factory=list)
    summary: dict = field(default_factory=dict)  # method-specific entries for results.json


Method = Callable[[RunContext], nn.Module]
METHODS: dict[str, Method] = {"fp": fp.apply}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]
