"""Light pretraining of a compressed student made from the loaded model (KnGPT2, Edalati et al.
ACL 2022; its DistilGPT2-style baseline).

The loaded model is the teacher. The student is the same model compressed in place
(``method.student.kind``; ``none``: not compressed, the control that measures what the extra
training alone does): ``kronecker``, every chosen block linear replaced by the nearest sum of
Kronecker products of its weight (``quadapter.models.decompose``), or ``layer_drop``, a shallower
model of some of the teacher's own blocks (``quadapter.models.layer_drop``: every other one by
default, DistilGPT2's initialization). All of the student's weights then train on the task's LM
data — on the LM loss alone (``distill=none``, the ablation) or with intermediate-layer knowledge
distillation from the FP teacher (``distill=kd``: logits, hidden states, attention outputs; a
layer-dropped student's layers map uniformly onto the teacher's unless ``distill.layers`` says).
What it trains on is ``method.data``: ``pretraining``, a slice of the loaded model's own
pretraining mixture (a model quadapter pretrained: each domain's first ``train.train_tokens``
tokens, equal weight), KnGPT2's light pretraining; or ``dataset``, the run's dataset's train split.
Curves of held-out perplexity over the pretraining come with it; the student is saved so that later
runs (fine-tuning, PTQ) load it with ``model.name_or_path``.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING

import pytorch_lightning as pl
from torch import nn

from quadapter.data.tokens import cached_encode
from quadapter.methods.distill import uniform_layer_map
from quadapter.methods.embedded_model import domain_text
from quadapter.methods.train_module import weight_groups
from quadapter.methods.training import train
from quadapter.models.decompose import kronecker_decompose, save_decomposed
from quadapter.models.layer_drop import every_other, keep_blocks

if TYPE_CHECKING:
    from quadapter.methods import RunContext

log = logging.getLogger(__name__)
STUDENTS = ("kronecker", "layer_drop", "none")  # none: the loaded model itself (the extra-training control)
DATA = ("pretraining", "dataset")  # method.data: what the student trains on
SAVE_DIR = "student"  # where the trained student is saved inside the run dir


def make_student(model: nn.Module, spec) -> dict:
    """Compress ``model`` in place as ``spec`` (``method.student``) says; what was done."""
    if spec.kind == "kronecker":
        factors = {k: list(v) for k, v in (spec.get("factors") or {}).items()}
        return {"kind": "kronecker", **kronecker_decompose(
            model, None if spec.sites is None else list(spec.sites), compression=spec.compression,
            factors=factors, rank=spec.rank, embedding=spec.embedding)}
    if spec.kind == "none":
        params = sum(p.numel() for p in model.parameters())
        return {"kind": "none", "params_before": params, "params_after": params, "compression": 1.0}
    n_blocks = model.config.num_hidden_layers
    keep = every_other(n_blocks) if spec.keep is None else list(spec.keep)
    return {"kind": "layer_drop", **keep_blocks(model, keep)}


def pretraining_data(ctx: RunContext, train_cfg) -> tuple[pl.LightningDataModule, dict]:
    """Blocks of the loaded model's own pretraining domains (``model.pretrain``), each cut to its
    first ``train_cfg.train_tokens`` tokens, drawn with equal weight."""
    spec = ctx.cfg.model.pretrain  # the schema has checked there is one (method.data=pretraining)
    limit = train_cfg.get("train_tokens")
    ids = {d: cached_encode(domain_text(spec, d), ctx.tokenizer, ctx.cache_dir) for d in spec.domains}
    ids = {d: t[:limit] if limit else t for d, t in ids.items()}
    data = ctx.task.training_blocks({f"pretraining domain {d!r}": t for d, t in ids.items()}, train_cfg,
                                    ctx.cfg.seed)
    return data, {"train_tokens": sum(len(t) for t in ids.values()),
                  "domain_tokens": {d: len(t) for d, t in ids.items()}}


def apply(ctx: RunContext) -> nn.Module:
    cfg, method, model = ctx.cfg, ctx.cfg.method, ctx.model
    distilled = cfg.get("distill") is not None and cfg.distill.name != "none"
    teacher = copy.deepcopy(model).to(ctx.device).eval() if distilled else None
    if teacher is not None:
        for p in teacher.parameters():
            p.requires_grad_(False)
    teacher_layers = model.config.num_hidden_layers
    record = make_student(model, method.student)
    model.to(ctx.device)
    layers = uniform_layer_map(model.config.num_hidden_layers, teacher_layers)
    log.info("kd_pretrain: %s student, %d -> %d parameters (%.2fx)", record["kind"], record["params_before"],
             record["params_after"], record["params_before"] / record["params_after"])
    for p in model.parameters():
        p.requires_grad_(True)
    groups = weight_groups(model, method.lr, method.weight_decay)
    ctx.summary["student"] = record | {"layers": layers if distilled else None}
    data = pretraining_data(ctx, method.train) if method.data == "pretraining" else None
    ctx.summary["training"] = train(ctx, groups, method.train, "pretrain", "method.train",
                                    teacher=teacher, layers=layers, data=data)
    if method.save_student:
        out = ctx.run_dir / SAVE_DIR
        if record["kind"] == "kronecker":
            save_decomposed(model, ctx.tokenizer, record["spec"], out)
        else:
            model.save_pretrained(str(out))
            ctx.tokenizer.save_pretrained(str(out))
        ctx.summary["student"]["saved"] = str(out)
    return model
