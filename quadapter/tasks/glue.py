"""GLUE sequence classification (and STS-B regression): encoding, metrics and the evaluator.

The metrics are GLUE's canonical ones per task (``data.glue.TASKS``: MRPC accuracy + F1, CoLA
Matthews correlation, STS-B Pearson + Spearman, the others accuracy), computed by torchmetrics and
reported in percent as GLUE leaderboards do; the first is the task's primary metric, maximised.
Examples are tokenized once (truncated to ``max_length``) and padded per batch, so a batch costs
what its longest pair does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (BinaryAccuracy, BinaryF1Score, BinaryMatthewsCorrCoef,
                                         MulticlassAccuracy)
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from quadapter.data.glue import GlueSplit, GlueTask

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

    def __len__(self) -> int:
        return len(self.features)


def encode(split: GlueSplit, tokenizer, max_length: int) -> Encoded:
    """Tokenize every example (a pair where the task has two texts), truncated to ``max_length``."""
    enc = tokenizer(*split.texts, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    features = [{k: enc[k][i] for k in keys} for i in range(len(split))]
    dtype = torch.float32 if split.task.is_regression else torch.long
    return Encoded(features, torch.tensor(split.labels, dtype=dtype))


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
    """``{metric: value in percent}`` of ``model`` (a sequence classifier) on ``data``."""
    device = next(model.parameters()).device
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
