"""GLUE sequence classification (and STS-B regression): encoding, metrics and the evaluator.

The metrics are GLUE's canonical ones per task (``data.glue.TASKS``: MRPC accuracy + F1, CoLA
Matthews correlation, STS-B Pearson + Spearman, the others accuracy), computed by torchmetrics and
reported in percent as GLUE leaderboards do; the first is the task's primary metric, maximised.
Examples are tokenized once (truncated to ``max_length``) and padded per batch, so a batch costs
what its longest pair does.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from typing import Any, Iterable, Iterator, Mapping

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (BinaryAccuracy, BinaryF1Score, BinaryMatthewsCorrCoef,
                                         MulticlassAccuracy)
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from quadapter.data import glue as glue_data
from quadapter.data.datamodule import ResumableLoader
from quadapter.data.glue import GlueSplit, GlueTask
from quadapter.errors import ConfigError
from quadapter.models import arch as families
from quadapter.tasks.base import Task, device_of
from quadapter.data.augment import make_augmenter
from quadapter.data.tokens import tokenizer_fingerprint

DIRECTION = "maximize"  # every GLUE metric: higher is better


def _metric(name: str, spec: GlueTask) -> Metric:
    binary = spec.num_labels == 2
    if name == "accuracy":
        return BinaryAccuracy() if binary else MulticlassAccuracy(spec.num_labels, average="micro")
    if name == "f1":
        return BinaryF1Score()
    if name == "mcc":
        return BinaryMatthewsCorrCoef()
    if name == "pearson":
        return PearsonCorrCoef()
    if name == "spearman":
        return SpearmanCorrCoef()
    raise ValueError(f"unknown GLUE metric {name!r}")


def metrics(spec: GlueTask) -> MetricCollection:
    """The task's metrics, keyed by their names in ``spec.metrics``."""
    return MetricCollection({name: _metric(name, spec) for name in spec.metrics})


def primary_metric(spec: GlueTask) -> str:
    return spec.metrics[0]


@dataclass
class Encoded:
    """Token ids of every example (unpadded lists) and the labels as one tensor."""

    features: list[dict[str, list[int]]]
    labels: torch.Tensor
    truncated: int | None = None  # examples cut at max_length (counted for whole splits)

    def __len__(self) -> int:
        return len(self.features)

    def subset(self, idx: list[int]) -> "Encoded":
        return Encoded([self.features[i] for i in idx], self.labels[idx])

    @property
    def tokens(self) -> int:
        return sum(len(f["input_ids"]) for f in self.features)


def encode(split: GlueSplit, tokenizer, max_length: int) -> Encoded:
    """Tokenize every example (a pair where the task has two texts), truncated to ``max_length``."""
    full = tokenizer(*split.texts, truncation=False, verbose=False)["input_ids"]
    enc = tokenizer(*split.texts, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    features = [{k: enc[k][i] for k in keys} for i in range(len(split))]
    dtype = torch.float32 if split.task.is_regression else torch.long
    return Encoded(features, torch.tensor(split.labels, dtype=dtype),
                   sum(len(ids) > max_length for ids in full))


def cached_encode(split: GlueSplit, tokenizer, max_length: int, cache_dir: str | Path) -> Encoded:
    """``encode`` through ``<cache_dir>/tokens`` (keyed by the rows, ``max_length`` and the
    tokenizer), as the LM corpora are: every run of a sweep reuses the ids."""
    blob = json.dumps([split.task.name, split.texts, max_length]).encode()
    key = hashlib.sha256(blob).hexdigest()[:24] + "-" + tokenizer_fingerprint(tokenizer)
    path = Path(cache_dir) / "tokens" / f"glue-{key}.pt"
    dtype = torch.float32 if split.task.is_regression else torch.long
    labels = torch.tensor(split.labels, dtype=dtype)
    if path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
            return Encoded(stored["features"], labels, stored["truncated"])
        except Exception:  # a damaged entry (killed mid-write elsewhere): rebuild it
            path.unlink(missing_ok=True)
    encoded = encode(split, tokenizer, max_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        torch.save({"features": encoded.features, "truncated": encoded.truncated}, f)
    os.replace(tmp, path)
    return encoded


def batches(data: Encoded, tokenizer, batch_size: int, order: torch.Tensor | None = None):
    """``(inputs, labels)`` batches, each padded to its longest example."""
    order = torch.arange(len(data)) if order is None else order
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size].tolist()
        inputs = tokenizer.pad([data.features[j] for j in idx], return_tensors="pt")
        yield dict(inputs), data.labels[idx]


def predictions(logits: torch.Tensor, spec: GlueTask) -> torch.Tensor:
    """Class ids, or the regression score."""
    return logits.squeeze(-1) if spec.is_regression else logits.argmax(-1)


@torch.inference_mode()
def evaluate(model: nn.Module, data: Encoded, tokenizer, spec: GlueTask,
             batch_size: int = 32) -> dict[str, float]:
    """``{metric: value in percent}`` of ``model`` (a sequence classifier) on ``data``; one without
    parameters (an onnxruntime session) computes on the CPU."""
    device = next(model.parameters(), torch.empty(0)).device
    collection = metrics(spec).to(device)
    was_training = model.training
    model.eval()
    try:
        for inputs, labels in batches(data, tokenizer, batch_size):
            logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits
            collection.update(predictions(logits.float(), spec), labels.to(device))
    finally:
        model.train(was_training)
    return {name: 100.0 * float(value) for name, value in collection.compute().items()}


class _Indices(Dataset):
    """Example indices; the loader's collate pads the examples they name."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class GlueDataModule(pl.LightningDataModule):
    """``num_samples`` training examples in seeded epochs (each a fresh permutation), batches
    padded to their longest example; resumable mid-epoch like the LM blocks (``ResumableLoader``)."""

    def __init__(self, data: Encoded, tokenizer, batch_size: int, num_samples: int, seed: int,
                 augment=None):
        super().__init__()
        self.data, self.tokenizer, self.augment = data, tokenizer, augment
        self.batch_size, self.num_samples, self.seed = batch_size, num_samples, seed

    def collate(self, idx: list[int]):
        inputs = dict(self.tokenizer.pad([self.data.features[i] for i in idx], return_tensors="pt"))
        if self.augment is not None:  # quadapter.data.augment: seeded by the batch's examples
            inputs = self.augment(inputs, idx)
        return inputs, self.data.labels[idx]

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        epochs = -(-self.num_samples // len(self.data))
        order = torch.cat([torch.randperm(len(self.data), generator=gen)
                           for _ in range(epochs)])[:self.num_samples].tolist()
        trainer = self.trainer
        loader = ResumableLoader(_Indices(len(self.data)), self.batch_size, order, self.seed,
                                 trained_batches=lambda: trainer.global_step, collate_fn=self.collate)
        if trainer is not None and trainer.global_step:
            loader.load_state_dict({"batches": trainer.global_step})
        return loader


class Glue(Task):
    """GLUE (``task=glue``, ``dataset=glue_<task>``): fine-tune a sequence classifier, score dev.

    The pretrained encoder gets a new classifier head, so methods that start from a trained model
    (fp, ptq) fine-tune it first (``task.finetune``). The held-out set is GLUE's dev split (test
    labels are hidden); ``task.holdout_examples`` > 0 holds a seeded slice of train out as the
    validation set the curves score instead (for model selection), and trains on the rest.
    """

    name = "glue"
    head = "sequence_classification"
    direction = DIRECTION
    finetunes_before_quantizing = True

    def __init__(self, cfg: DictConfig, model: nn.Module, tokenizer, data_dir: str | None,
                 cache_dir: Path):
        super().__init__(cfg, model, tokenizer, data_dir, cache_dir)
        self.spec = glue_data.task(cfg.dataset.task)
        limit = families.for_model(model).context_length(model.config)
        if cfg.task.max_length > limit:
            raise ConfigError(f"task.max_length={cfg.task.max_length} is above the {limit} positions "
                              f"of model {cfg.model.name}: lower task.max_length (at most {limit})")
        self.dev = self._encode("dev")  # read now: a missing or broken file fails before the method
        self.train = self._encode("train")
        self.validation: Encoded | None = None
        holdout = cfg.task.holdout_examples
        if holdout:
            if holdout >= len(self.train):
                raise ConfigError(f"task.holdout_examples={holdout} leaves no training data: "
                                  f"{cfg.dataset.name} has {len(self.train)} train examples")
            order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(cfg.seed))
            self.validation = self.train.subset(order[-holdout:].tolist())
            self.train = self.train.subset(order[:-holdout].tolist())
        self.curve_data: dict[str, Encoded] = {}

    def _encode(self, split: str) -> Encoded:
        rows = glue_data.load_split(self.cfg.dataset, split, self.data_dir)
        return cached_encode(rows, self.tokenizer, self.cfg.task.max_length, self.cache_dir)

    @staticmethod
    def num_labels(cfg: DictConfig) -> int:
        return glue_data.task(cfg.dataset.task).num_labels

    @staticmethod
    def primary_metric(cfg: DictConfig) -> str:
        return primary_metric(glue_data.task(cfg.dataset.task))

    def evaluate(self, model: nn.Module) -> Iterator[tuple[str, dict[str, float], dict[str, Any]]]:
        cfg = self.cfg
        yield cfg.dataset.name, evaluate(model, self.dev, self.tokenizer, self.spec,
                                         cfg.eval.batch_size), {
            "dataset": cfg.dataset.name, "task": self.spec.name, "split": "dev",
            "examples": len(self.dev), "max_length": cfg.task.max_length,
            "truncated": self.dev.truncated, "tokenizer": self.tokenizer.name_or_path,
            "metrics": list(self.spec.metrics)}

    def calibration(self, split: str, count: int, batch_size: int,
                    seed: int) -> tuple[Iterable, dict[str, Any]]:
        """``count`` seeded random training examples (calibration never sees dev)."""
        if split != "train":
            raise ConfigError(f"quantizer.calibration.split={split!r}: GLUE calibrates on train "
                              "examples (dev is the held-out set); set it to train")
        n = min(count, len(self.train))
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed))
        data = self.train.subset(order[:n].tolist())
        info = {"dataset": self.cfg.dataset.name, "split": split, "examples": n,
                "tokens": data.tokens}
        return list(batches(data, self.tokenizer, batch_size)), info

    def forward(self, model: nn.Module, batch) -> Any:
        inputs, _ = batch
        device = device_of(model)
        return model(**{k: v.to(device) for k, v in inputs.items()})

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        inputs, labels = batch
        return model(**inputs, labels=labels).loss

    @staticmethod
    def model_inputs(batch) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        inputs, labels = batch
        return inputs, labels, inputs["attention_mask"]  # padding does not count

    def train_data(self, train_cfg: Mapping[str, Any], seed: int,
                   context: str) -> tuple[pl.LightningDataModule, dict[str, Any]]:
        samples = train_cfg["steps"] * train_cfg["batch_size"]
        augment = make_augmenter(self.cfg.task.get("augment"), self.tokenizer, seed) \
            if train_cfg.get("augment") else None
        data = GlueDataModule(self.train, self.tokenizer, train_cfg["batch_size"], samples, seed, augment)
        info = {"train_examples": len(self.train), "epochs": round(samples / len(self.train), 3)}
        if augment is not None:
            info["augment"] = dict(self.cfg.task.augment)
        return data, info

    def curve_sets(self) -> dict[str, str]:
        """Held-out: the train slice held out (``task.holdout_examples``) or dev, its first
        ``eval.val_max_examples``; train: a fixed seeded subset of ``eval.train_eval_examples``."""
        cfg = self.cfg
        held, split = ((self.validation, f"train holdout ({len(self.validation)})") if self.validation
                       else (self.dev, "dev"))
        self.curve_data[f"val/{cfg.dataset.name}"] = held.subset(
            list(range(min(len(held), cfg.eval.val_max_examples or len(held)))))
        n = min(len(self.train), cfg.eval.train_eval_examples)
        if n:
            order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(cfg.seed))
            self.curve_data["train"] = self.train.subset(order[:n].tolist())
        return {cfg.dataset.name: split, "train": f"train subset ({n})"}

    def curve_point(self, model: nn.Module, mean_train_loss: float | None) -> dict[str, float]:
        row = {} if mean_train_loss is None else {"train/loss_mean": mean_train_loss}
        for prefix, data in self.curve_data.items():
            scores = evaluate(model, data, self.tokenizer, self.spec, self.cfg.eval.batch_size)
            row |= {f"{prefix}/{metric}": value for metric, value in scores.items()}
        return row

    @staticmethod
    def format_results(results: Mapping[str, Any]) -> list[str]:
        lines = []
        for name, proto in results["protocol"].items():
            scores = "  ".join(f"{m} {results['metrics'][f'test/{name}/{m}']:.2f}"
                               for m in proto["metrics"])
            lines.append(f"{name:<14}{scores}   ({proto['split']}, {proto['examples']} examples, "
                         f"max_length {proto['max_length']})")
        return lines
