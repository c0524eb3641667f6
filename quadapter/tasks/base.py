"""What every task provides, so methods, the runner, sweeps and the report stay task-agnostic.

A task owns everything that differs between measuring perplexity and classifying sentences: the
model's head, the held-out data and how it is scored, calibration batches, the training data and
loss, and the points of the overfitting curves. A run builds its task once the model is loaded
(``Task(cfg, model, tokenizer, data_dir, cache_dir)``); the constructor reads and checks every
held-out split, so missing data fails before a method spends minutes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Mapping

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import nn

DIRECTIONS = ("minimize", "maximize")


class Task(ABC):
    """One task (``task.name``): class attributes say what it measures, methods do the work."""

    name: ClassVar[str]
    head: ClassVar[str]  # the model head it loads: causal_lm | sequence_classification
    direction: ClassVar[str]  # of every metric it reports: minimize | maximize
    finetunes_before_quantizing: ClassVar[bool] = False  # the pretrained head is not the task's

    def __init__(self, cfg: DictConfig, model: nn.Module, tokenizer, data_dir: str | None,
                 cache_dir: Path):
        self.cfg, self.tokenizer, self.data_dir, self.cache_dir = cfg, tokenizer, data_dir, cache_dir

    @staticmethod
    def num_labels(cfg: DictConfig) -> int | None:
        """Output units of the head the loader must build (None: the checkpoint's own head)."""
        return None

    @staticmethod
    @abstractmethod
    def primary_metric(cfg: DictConfig) -> str:
        """The metric sweeps optimise and reports lead with (``test/<set>/<metric>``)."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> Iterator[tuple[str, dict[str, float], dict[str, Any]]]:
        """Per held-out set, as it is scored: its name, ``{metric: value}`` and its protocol."""

    @abstractmethod
    def calibration(self, split: str, count: int, batch_size: int,
                    seed: int) -> tuple[Iterable, dict[str, Any]]:
        """Seeded calibration batches from the fine-tuning dataset's ``split`` and what they were."""

    @abstractmethod
    def forward(self, model: nn.Module, batch: Any) -> Any:
        """Run ``model`` on one calibration or training batch (moved to the model's device)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The training loss of one batch."""

    @abstractmethod
    def model_inputs(self, batch: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """A training batch as the model's keyword inputs, the labels and the mask of the tokens that
        count (what distillation compares a student and its teacher on)."""

    @abstractmethod
    def train_data(self, train_cfg: Mapping[str, Any], seed: int,
                   context: str) -> tuple[pl.LightningDataModule, dict[str, Any]]:
        """``train_cfg.steps × train_cfg.batch_size`` seeded training samples, and what they were;
        ``context`` names the config that asked (for the message when the data is too small)."""

    @abstractmethod
    def curve_sets(self) -> dict[str, str]:
        """Prepare the curves' held-out data; returns the split each curve set uses."""

    @abstractmethod
    def curve_point(self, model: nn.Module, mean_train_loss: float | None) -> dict[str, float]:
        """One point of the overfitting curves: ``train/...`` from the running train loss (and
        the task's train subset), ``val/<set>/<metric>`` for every held-out set."""

    @staticmethod
    @abstractmethod
    def format_results(results: Mapping[str, Any]) -> list[str]:
        """Terminal lines of a run's final metrics, one per held-out set."""


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
