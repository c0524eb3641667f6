"""Knowledge distillation from a full-precision fine-tuned teacher (``distill=kd``): the one
distillation loss of quadapter.

Binarization and ternarization of BERT (TernaryBERT, BinaryBERT, the two-stage progressive paper)
train the low-bit student to match the FP fine-tuned model: the task loss plus the KL divergence
between the softened output distributions (regression heads: the squared difference of the
outputs) plus the mean squared error of every hidden state (embeddings and each layer), each
weighted by config. The teacher is a completed ``method=fp`` run of the same GLUE task whose
fine-tuned model was saved (``task.finetune.save=true``: ``<run dir>/finetuned``); it must share the
student's tokenizer, since the two read the same token ids.

Any method that trains on GLUE takes it (``training.train`` swaps the task's loss for this one);
the FP fine-tuning a method starts from does not (it is what a teacher is made of).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from quadapter.errors import ConfigError
from quadapter.methods.saved_finetune import load_saved, saved_fp_run


def check(cfg: DictConfig) -> None:
    if cfg.get("distill") is not None and cfg.distill.name != "none":
        saved_fp_run(cfg, "distill.teacher")


def load_teacher(cfg: DictConfig, tokenizer, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher in eval mode without gradients, and what the run records about it."""
    teacher, run_dir, results = load_saved(cfg, "distill.teacher", tokenizer, device)
    record = {"teacher": str(run_dir), "teacher_metrics": results.get("metrics"),
              "temperature": cfg.distill.temperature, "weights": dict(cfg.distill.weights)}
    return teacher, record


class DistillationLoss:
    """``w_task·task + w_logits·KL(teacher ‖ student at T)·T² + w_hidden·mean_l MSE(h_l)`` of a
    GLUE batch ``(inputs, labels)``; a head with one output (regression) matches outputs by MSE.
    The hidden-state MSE averages over the real (unpadded) tokens and the hidden width."""

    def __init__(self, teacher: nn.Module, temperature: float, task: float, logits: float,
                 hidden: float) -> None:
        self.teacher, self.temperature = teacher, temperature
        self.w_task, self.w_logits, self.w_hidden = task, logits, hidden

    def parts(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        inputs, labels = batch
        hidden = self.w_hidden > 0
        student = model(**inputs, labels=labels, output_hidden_states=hidden)
        with torch.no_grad():
            teacher = self.teacher(**inputs, output_hidden_states=hidden)
        s, t = student.logits.float(), teacher.logits.float()
        if s.shape != t.shape:
            raise ConfigError(f"config error: the teacher's head has {t.shape[-1]} outputs, the "
                              f"student's {s.shape[-1]}: distill.teacher must be fine-tuned on this task")
        if s.shape[-1] == 1:
            logits = F.mse_loss(s, t)
        else:
            temp = self.temperature
            logits = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1),
                              log_target=True, reduction="batchmean") * temp**2
        parts = {"task": student.loss, "logits": logits}
        if hidden:
            sh, th = student.hidden_states, teacher.hidden_states
            if len(sh) != len(th) or sh[-1].shape != th[-1].shape:
                raise ConfigError("config error: the teacher's hidden states do not match the "
                                  "student's (layers or width): set distill.weights.hidden=0 or use a "
                                  "teacher of the same architecture")
            mask = inputs["attention_mask"].unsqueeze(-1).to(sh[0].dtype)  # real tokens only
            scale = mask.sum() * sh[0].shape[-1]
            parts["hidden"] = torch.stack([((a - b).pow(2) * mask).sum() / scale
                                           for a, b in zip(sh, th)]).mean()
        return parts

    def __call__(self, model: nn.Module, batch) -> torch.Tensor:
        parts = self.parts(model, batch)
        total = self.w_task * parts["task"] + self.w_logits * parts["logits"]
        return total + self.w_hidden * parts["hidden"] if "hidden" in parts else total
