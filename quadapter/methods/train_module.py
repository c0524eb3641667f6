"""The one Lightning module every training method uses: a task's loss, AdamW, warm-up + cosine.

Pretraining the embedded model, fine-tuning on a task, QAT, Quadapter's end-to-end phase: what
trains is decided by the parameter groups it is given (each with its own learning rate, so
quantizer ranges and adapter scales can move at their own pace), what is minimised by the task's
``loss(model, batch)`` (the causal-LM loss by default); it owns the optimizer and the schedule.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch import nn

from quadapter.errors import TrainingError


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def weight_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """The trainable weights of ``model``: matrices with weight decay, vectors without."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"name": "weights", "params": [p for p in params if p.ndim >= 2], "lr": lr,
             "weight_decay": weight_decay},
            {"name": "weights_no_decay", "params": [p for p in params if p.ndim < 2], "lr": lr,
             "weight_decay": 0.0}]


def causal_lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of a block of token ids."""
    return model(ids, labels=ids).loss


class TrainModule(pl.LightningModule):
    """``loss(model, batch)`` minimised by AdamW over named parameter groups; warm-up + cosine."""

    def __init__(self, model: nn.Module, param_groups: list[dict], total_steps: int,
                 warmup_steps: int = 0, betas: tuple[float, float] = (0.9, 0.95),
                 loss: Callable[[nn.Module, Any], torch.Tensor] = causal_lm_loss):
        super().__init__()
        self.model, self.loss = model, loss
        self.param_groups = [g for g in param_groups if g["params"]]
        if not self.param_groups:
            raise ValueError("nothing to train: every parameter group is empty")
        self.total_steps, self.warmup_steps, self.betas = total_steps, warmup_steps, tuple(betas)

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss(self.model, batch)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self(batch)
        if not torch.isfinite(loss):
            raise TrainingError(f"non-finite training loss ({loss.item()}) at step {self.global_step}: "
                                f"the run stopped; lower the learning rates (method.lr.* or "
                                f"model.pretrain.lr) or raise the bit-widths")
        self.log("train/loss", loss, prog_bar=True, batch_size=1)
        terms = getattr(self.loss, "last_terms", None)  # a distillation loss: its unweighted terms
        if not terms:
            return loss
        for name, value in terms.items():
            self.log(f"train/distill_{name}", value, batch_size=1)
        return {"loss": loss, "task_loss": terms["task"]}  # the curves' train metric is the task's own

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.param_groups, betas=self.betas)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, self.warmup_steps, self.total_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
