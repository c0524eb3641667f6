"""The Lightning module that trains a causal LM on the language-modelling loss.

Whatever is trainable (all weights for pretraining, later quantizer ranges or adapter scales) is
decided by ``requires_grad`` before the module is built; this module only owns the loss, the
optimizer and the schedule.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch import nn


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class CausalLMModule(pl.LightningModule):
    def __init__(self, model: nn.Module, lr: float, total_steps: int, warmup_steps: int = 0,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.95)):
        super().__init__()
        self.model = model
        self.lr, self.total_steps, self.warmup_steps = lr, total_steps, warmup_steps
        self.weight_decay, self.betas = weight_decay, tuple(betas)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.model(batch, labels=batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/ppl", loss.detach().exp())
        return loss

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.lr, betas=self.betas)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, self.warmup_steps, self.total_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
