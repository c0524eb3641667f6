"""Progressive quantization (Le et al., "Efficient Two-Stage Progressive Quantization of BERT",
SustaiNLP 2022): fine-tune through a schedule of ever lower bit-widths, each stage starting from the
weights the previous one ended with.

The default schedule is the paper's two stages: weights only, 8 → 4 → 2 → ternary → binary bits
(activations full precision), then binary weights with 8-bit activations. A stage quantizes the
model afresh at its own bits — ranges re-derived from the current weights and calibration data,
nothing else re-initialized — and trains every weight through the straight-through estimator
(fixed ranges: ternary and binary scales follow the weights anyway). On a task with a new head
(GLUE) the schedule starts, by default, from the FP fine-tuned model (``method.start``).

One run holds the whole schedule: the curves run on across stages (``training.stages`` marks the
boundaries) and each stage checkpoints under ``checkpoints/stage<k>``, so a killed run re-launched
passes through its finished stages (restored from their last checkpoint, not retrained) and resumes
in the stage and at the step it reached. The last stage's bits are the run's ``bits``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf
from torch import nn

from quadapter.errors import ConfigError
from quadapter.methods import ptq, qat
from quadapter.methods.fp import finetune
from quadapter.methods.quant_config import quant_settings
from quadapter.methods.training import train
from quadapter.schema.groups import bits_name

if TYPE_CHECKING:
    from quadapter.methods import RunContext

log = logging.getLogger(__name__)
STARTS = ("finetuned", "pretrained")


def stage_configs(cfg: DictConfig) -> list[DictConfig]:
    """One run config per stage: the run's, with ``bits`` set to the stage's."""
    out = []
    for stage in cfg.method.stages:
        bits = {"name": bits_name(stage.weight, stage.act), "weight": stage.weight, "act": stage.act}
        out.append(OmegaConf.merge(cfg, {"bits": bits}))
    return out


def check(cfg: DictConfig) -> None:
    """Every stage's quantizers build (bits, granularity, ranges) as the run will build them."""
    for k, stage_cfg in enumerate(stage_configs(cfg)):
        try:
            quant_settings(stage_cfg, "progressive")
        except ConfigError as e:
            raise ConfigError(f"{e} (in method.stages[{k}]: bits {stage_cfg.bits.name})") from e


def apply(ctx: RunContext) -> nn.Module:
    cfg, method = ctx.cfg, ctx.cfg.method
    offset, stages, curves = 0, [], []
    if method.start == "finetuned":
        training = finetune(ctx)  # None on a task whose model needs no fine-tuning first (LM)
        if training is not None:
            curves += training["curves"]
            stages.append({"stage": "finetune", "bits": "fp", "start_step": 0, "steps": training["steps"],
                           **({"loaded": training["loaded"]} if "loaded" in training else {})})
            offset = training["steps"]
    sim = None
    for k, (spec, stage_cfg) in enumerate(zip(method.stages, stage_configs(cfg), strict=True)):
        if sim is not None:
            sim.remove()  # the trained weights stay; the next stage quantizes them afresh
        stage_ctx = dataclasses.replace(ctx, cfg=stage_cfg)
        sim = ptq.quantize(stage_ctx, "progressive")
        groups = qat.model_weight_groups(ctx.model, sim, spec.lr, method.weight_decay)
        augment = bool(spec.get("augment", False))
        log.info("progressive stage %d/%d: %s, %d steps from step %d", k + 1, len(method.stages),
                 stage_cfg.bits.name, spec.steps, offset)
        train_cfg = OmegaConf.create({"steps": spec.steps, "batch_size": method.train.batch_size,
                                      "warmup_steps": method.train.warmup_steps,
                                      "train_tokens": method.train.train_tokens,
                                      "augment": augment})
        training = train(stage_ctx, groups, train_cfg, f"stage{k}", f"method.stages[{k}]",
                         step_offset=offset)
        curves += training["curves"]
        stages.append({"stage": k, "bits": stage_cfg.bits.name, "start_step": offset, "steps": spec.steps,
                       "augment": augment,
                       "model_size": ctx.summary["quantization"]["model_size"]})
        offset += spec.steps
    for p in ctx.model.parameters():
        p.requires_grad_(False)
    ctx.summary["training"] = {**training, "phase": "progressive", "steps": offset, "curves": curves,
                               "stages": stages}
    return ctx.model
