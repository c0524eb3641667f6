"""Full precision: the reference row of every comparison.

On a task whose head is not pretrained (GLUE: a new classifier), the reference is the model
fine-tuned on the task in full precision (``task.finetune``); PTQ and progressive quantization
start from that fine-tuned model, or from a saved one (``task.finetune.load``: fine-tune once,
quantize many times). Otherwise (``task=lm``) it is the model as loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from quadapter.methods.saved_finetune import SAVE_DIR, load_saved, starts_from_saved
from quadapter.methods.train_module import weight_groups
from quadapter.methods.training import train

if TYPE_CHECKING:
    from quadapter.methods import RunContext


def finetune(ctx: RunContext, distill: bool = False) -> dict | None:
    """Fine-tune every weight of ``ctx.model`` on the task when the task needs it (or copy a saved
    fine-tuning's weights: ``task.finetune.load``); the summary. ``distill``: on the distillation
    loss where the run configures one (``method=fp distill=kd``: a compressed student fine-tuned
    with KD from an FP teacher); the fine-tuning the quantizing methods start from never distils."""
    if not ctx.task.finetunes_before_quantizing:
        return None
    spec = ctx.cfg.task.finetune
    if starts_from_saved(ctx.cfg):
        saved, run_dir, results = load_saved(ctx.cfg, "task.finetune.load", ctx.tokenizer, ctx.device)
        ctx.model.load_state_dict(saved.state_dict())
        return {"phase": "finetune", "loaded": str(run_dir), "loaded_seed": results.get("seed"),
                "loaded_metrics": results.get("metrics"), "steps": 0, "curves": []}
    for p in ctx.model.parameters():
        p.requires_grad_(True)
    summary = train(ctx, weight_groups(ctx.model, spec.lr, spec.weight_decay), spec, "finetune",
                    "task.finetune", distill=distill)
    for p in ctx.model.parameters():
        p.requires_grad_(False)
    return summary


def apply(ctx: RunContext) -> nn.Module:
    training = finetune(ctx, distill=True)
    if training is not None:
        ctx.summary["training"] = training
        if ctx.cfg.task.finetune.get("save"):  # a distillation teacher (distill=kd distill.teacher=<run dir>)
            out = Path(ctx.run_dir) / SAVE_DIR
            ctx.model.save_pretrained(out)
            ctx.tokenizer.save_pretrained(out)
            ctx.summary["saved"] = str(out)
    return ctx.model
