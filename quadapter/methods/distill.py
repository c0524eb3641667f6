"""Knowledge distillation from a full-precision fine-tuned teacher (``distill=kd``): the one
distillation loss of quadapter.

Binarization and ternarization of BERT (TernaryBERT, BinaryBERT, the two-stage progressive paper)
train the low-bit student to match the FP fine-tuned model: the task loss plus the KL divergence
between the softened output distributions (regression heads: the squared difference of the
outputs) plus the mean squared error of every hidden state (embeddings and each layer), each
weighted by config. The teacher is a completed ``method=fp`` run of the same GLUE task whose
fine-tuned model was saved (``task.finetune.save=true``: ``<run dir>/finetuned``); it must share the
student's tokenizer, since the two read the same token ids.

Any method that trains on GLUE takes it (``training.train`` swaps the task's loss for this one),
``fp`` too (a compressed student fine-tuned in FP with KD: KnGPT2's downstream step); the FP
fine-tuning a quantizing method starts from does not (it is what a teacher is made of).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from quadapter.errors import ConfigError
from quadapter.methods.saved_finetune import load_saved, saved_fp_run
from quadapter.models.arch import for_model
from quadapter.schema.groups import OWN_TEACHER_METHODS


def check(cfg: DictConfig) -> None:
    """A saved teacher run is a completed FP fine-tuning of this task (kd_pretrain holds its own)."""
    if (cfg.get("distill") is not None and cfg.distill.name != "none"
            and cfg.method.name not in OWN_TEACHER_METHODS):
        saved_fp_run(cfg, "distill.teacher")


def load_teacher(cfg: DictConfig, tokenizer, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher in eval mode without gradients, and what the run records about it."""
    teacher, run_dir, results = load_saved(cfg, "distill.teacher", tokenizer, device)
    record = {"teacher": str(run_dir), "teacher_metrics": results.get("metrics"),
              "temperature": cfg.distill.temperature, "weights": dict(cfg.distill.weights)}
    return teacher, record


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Hidden-state index of the teacher matched to each of the student's (index 0: the embeddings,
    i: block i's output): evenly spaced, ends matched (DistilBERT / TinyBERT's uniform mapping;
    every other block for a half-depth student)."""
    if student_layers > teacher_layers:
        raise ConfigError(f"config error: a student of {student_layers} blocks cannot map onto a teacher "
                          f"of {teacher_layers}: give distill.layers explicitly")
    return [round(i * teacher_layers / student_layers) for i in range(student_layers + 1)]


class _Captured:
    """The outputs of one module per block during a forward (the attention sublayers')."""

    def __init__(self, model: nn.Module, path: str) -> None:
        self.outputs: list[torch.Tensor] = []
        blocks = [b for _, b in for_model(model).block_list(model)]
        self.handles = [b.get_submodule(path).register_forward_hook(self._keep) for b in blocks]

    def _keep(self, module, args, output) -> None:
        self.outputs.append(output[0] if isinstance(output, tuple) else output)

    def __enter__(self) -> _Captured:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


class DistillationLoss:
    """``w_task·task + w_logits·KL(teacher ‖ student at T)·T² + w_hidden·mean_l MSE(h_l)
    + w_attention·mean_l MSE(a_l)``: the one distillation loss (TernaryBERT/BinaryBERT-style KD of
    GLUE fine-tuning, KnGPT2's intermediate-layer KD of language models).

    Hidden states: index 0 is the embeddings, i the output of block i; ``layers[i]`` is the teacher's
    index matched to the student's i (default: the same index, for equal depths). Attention terms
    compare the output of the family's ``attention_output`` site of student block i−1 with teacher
    block ``layers[i]``−1. The logit KL averages over examples (GLUE) or real tokens (LM); a head
    with one output (regression) matches outputs by MSE. Hidden and attention MSEs average over the
    real (unpadded) tokens and the width. ``unpack(batch)`` gives the model inputs, labels and real
    tokens of a batch (the task's ``model_inputs``).
    """

    def __init__(self, teacher: nn.Module, temperature: float, task: float, logits: float,
                 hidden: float, unpack: Callable[[Any], tuple[dict, torch.Tensor, torch.Tensor]],
                 attention: float = 0.0, layers: Sequence[int] | None = None) -> None:
        self.teacher, self.temperature = teacher, temperature
        self.w_task, self.w_logits, self.w_hidden, self.w_attention = task, logits, hidden, attention
        self.layers, self.unpack = (list(layers) if layers is not None else None), unpack
        self.last_terms: dict[str, torch.Tensor] = {}  # the last call's unweighted terms

    def _mse(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return ((a - b).pow(2) * mask).sum() / (mask.sum() * a.shape[-1])

    def _layer_map(self, student: int, teacher: int) -> list[int]:
        if self.layers is None:
            if student != teacher:
                raise ConfigError("config error: the teacher's hidden states do not match the student's "
                                  f"({teacher} vs {student}): map the layers (distill.layers) or set the "
                                  "hidden and attention weights to 0")
            return list(range(student))
        if len(self.layers) != student or max(self.layers) >= teacher:
            raise ConfigError(f"config error: distill.layers={self.layers} must give one teacher index "
                              f"(0..{teacher - 1}) per student hidden state ({student})")
        return self.layers

    def parts(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        inputs, labels, tokens = self.unpack(batch)
        hidden, attention = self.w_hidden > 0, self.w_attention > 0
        arch = for_model(model)
        path = arch.block_sites[arch.attention_output] if attention else ""
        with (_Captured(model, path) if attention else nullcontext()) as s_attn:
            student = model(**inputs, labels=labels, output_hidden_states=hidden)
        with torch.no_grad(), (_Captured(self.teacher, path) if attention else nullcontext()) as t_attn:
            teacher = self.teacher(**inputs, output_hidden_states=hidden)
        s, t = student.logits.float(), teacher.logits.float()
        if s.shape != t.shape:
            raise ConfigError(f"config error: the teacher's head has {t.shape[-1]} outputs, the "
                              f"student's {s.shape[-1]}: distill.teacher must be fine-tuned on this task")
        if s.shape[-1] == 1:
            logits = F.mse_loss(s, t)
        else:
            temp = self.temperature
            kl = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True,
                          reduction="none").sum(-1)  # per example (GLUE) or per token (LM)
            weight = tokens.to(kl.dtype) if kl.shape == tokens.shape else torch.ones_like(kl)
            logits = (kl * weight).sum() / weight.sum() * temp**2
        parts = {"task": student.loss, "logits": logits}
        mask = tokens.unsqueeze(-1).to(s.dtype)  # real tokens only
        if hidden or attention:
            n_student = len(student.hidden_states) if hidden else len(s_attn.outputs) + 1
            n_teacher = len(teacher.hidden_states) if hidden else len(t_attn.outputs) + 1
            pairs = self._layer_map(n_student, n_teacher)
        if hidden:
            sh, th = student.hidden_states, teacher.hidden_states
            if sh[-1].shape[-1] != th[-1].shape[-1]:
                raise ConfigError("config error: the teacher's hidden width differs from the student's: set "
                                  "distill.weights.hidden=0 or use a teacher of the same width")
            parts["hidden"] = torch.stack([self._mse(sh[i], th[j], mask) for i, j in enumerate(pairs)]).mean()
        if attention:
            parts["attention"] = torch.stack([self._mse(s_attn.outputs[i - 1], t_attn.outputs[j - 1], mask)
                                              for i, j in enumerate(pairs) if i > 0 and j > 0]).mean()
        return parts

    def __call__(self, model: nn.Module, batch) -> torch.Tensor:
        """The weighted sum of the terms; ``last_terms`` keeps them (detached) for the logs and
        the curves, whose train metric stays the task's own loss."""
        parts = self.parts(model, batch)
        self.last_terms = {k: v.detach() for k, v in parts.items()}
        weights = {"task": self.w_task, "logits": self.w_logits, "hidden": self.w_hidden,
                   "attention": self.w_attention}
        return sum(weights[k] * v for k, v in parts.items())
