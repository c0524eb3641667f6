"""Quantization-aware training: PTQ initialization, then every weight (and, by config, every
quantizer range) trains through the straight-through estimator on the fine-tuning set.

The baseline Quadapter is measured against: with all weights free on a small fine-tuning set,
QAT tends to fit that set at the expense of the held-out domains, which its curves show.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from quadapter.methods import ptq
from quadapter.methods.saving import save_if_asked
from quadapter.methods.train_module import weight_groups
from quadapter.methods.training import train
from quadapter.quant.sim import QuantSim

if TYPE_CHECKING:
    from quadapter.methods import RunContext


def check(cfg) -> None:
    """As PTQ's: the quantization settings as the run builds them (the schema checked the rest)."""
    ptq.check(cfg, "qat")


def model_weight_groups(model: nn.Module, sim: QuantSim, lr: float, weight_decay: float) -> list[dict]:
    """Every model weight trainable (the quantizers' own parameters not among them), as AdamW
    groups: what QAT and each progressive stage train through the STE."""
    quantizer_params = {id(p) for q in sim.quantizers().values() for p in q.parameters()}
    for p in model.parameters():
        if id(p) not in quantizer_params:
            p.requires_grad_(True)
    groups = weight_groups(model, lr, weight_decay)
    for g in groups:
        g["params"] = [p for p in g["params"] if id(p) not in quantizer_params]
    return groups


def apply(ctx: RunContext) -> nn.Module:
    cfg = ctx.cfg
    sim = ptq.quantize(ctx, "qat")
    groups = model_weight_groups(ctx.model, sim, cfg.method.lr.weights, cfg.method.weight_decay)
    ranges = [p for q in sim.quantizers().values() for p in q.range_parameters()]
    groups.append({"name": "ranges", "params": ranges, "lr": cfg.method.lr.ranges, "weight_decay": 0.0})
    ctx.summary["training"] = train(ctx, groups, cfg.method.train, "e2e", "method.train")
    save_if_asked(ctx, sim)
    return ctx.model
