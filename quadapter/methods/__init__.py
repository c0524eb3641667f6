"""Methods: what happens to a loaded model before it is evaluated (``conf/method/*.yaml``).

A method is a function ``(RunContext) -> nn.Module`` returning the model to evaluate; the registry
maps ``method.name`` to it, so adding a method is one module and one entry here (and its config
schema in ``quadapter.schema.groups.METHODS``). A method may also register a config check that
needs its code (e.g. building its quantizers); ``check_config`` runs it after the schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger
from torch import nn
from transformers import PreTrainedTokenizerBase

from quadapter.errors import ConfigError
from quadapter.methods import (blockptq, distill, fp, gptq, kd_pretrain, lora, prequant, progressive, ptq, qat,
                               quadapter)
from quadapter.methods.saved_finetune import saved_fp_run, starts_from_saved
from quadapter.schema import validate
from quadapter.tasks import Task


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
    device: torch.device = torch.device("cpu")  # where the run computes (calibration, training)
    outlier_stats: dict = field(default_factory=dict)  # per-site OutlierStats of the last calibration
    task: Task | None = None  # what the run measures: data, loss, calibration batches, curves


Method = Callable[[RunContext], nn.Module]
METHODS: dict[str, Method] = {"fp": fp.apply, "ptq": ptq.apply, "qat": qat.apply,
                              "quadapter": quadapter.apply, "prequant": prequant.apply,
                              "lora": lora.apply, "progressive": progressive.apply, "gptq": gptq.apply,
                              "blockptq": blockptq.apply, "kd_pretrain": kd_pretrain.apply}
CHECKS: dict[str, Callable[[DictConfig], None]] = {"ptq": ptq.check, "qat": qat.check,
                                                     "quadapter": quadapter.check,
                                                     "prequant": prequant.check,
                                                     "lora": lora.check,
                                                     "progressive": progressive.check,
                                                     "gptq": gptq.check,
                                                     "blockptq": blockptq.check}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"config error: method.name={name!r} is invalid: expected one of "
                          f"{', '.join(METHODS)}")
    return METHODS[name]


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` on a bad config before anything heavy happens: every key, value and
    combination (``quadapter.schema.validate``: one message listing every problem), then the
    method's own check."""
    validate(cfg)
    get_method(cfg.method.name)
    if cfg.method.name in CHECKS:
        CHECKS[cfg.method.name](cfg)
    distill.check(cfg)  # a distillation teacher is a finished FP run of this task
    if starts_from_saved(cfg):
        saved_fp_run(cfg, "task.finetune.load")  # so is a saved fine-tuning to start from
