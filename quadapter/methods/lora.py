"""LoRA on the frozen quantized model (QLoRA-style), the parameter-efficient baseline to PreQuant.

Every block linear of the pretrained model is weight-quantized without data (``quantizer``,
``bits``: weight-only), the quantized weights are frozen in place, and low-rank adapters from the
``peft`` library (not ours) train beside them with the new task head: ``y = Q(W) x + B A x``.
The adapters stay unmerged for evaluation, as in QLoRA, so the base weights stay on their grid.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig
from torch import nn

from quadapter.errors import ConfigError
from quadapter.methods.quant_config import quant_settings
from quadapter.methods.training import train
from quadapter.models.arch import for_model
from quadapter.models.sites import quant_sites
from quadapter.quant.sim import QuantSim
from quadapter.quant.size import model_size

if TYPE_CHECKING:
    from quadapter.methods import RunContext

log = logging.getLogger(__name__)


def check(cfg: DictConfig) -> None:
    settings = quant_settings(cfg, "lora")
    if settings.weight is None or settings.act is not None:
        raise ConfigError(f"config error: method=lora quantizes weights only (bits={cfg.bits.name}): "
                          "use a weight-only preset such as bits=w4 (activations stay full precision)")


def quantize_weights_in_place(model: nn.Module, settings) -> tuple[list[str], dict]:
    """Replace every site's weight by its fake-quantized value (frozen); the layer names and the
    model's storage size with them quantized (``quant.size.model_size``)."""
    layers, _ = quant_sites(model, settings.sites)
    sim = QuantSim(model, layers, [], weight=settings.weight, act=None)
    sim.calibrate([], progress=False)  # weight ranges come from the weights alone
    with torch.no_grad():
        quantized = {name: w.quantized_weight().detach().clone() for name, w in sim.layers.items()}
    names, size = list(sim.layers), model_size(model, sim)
    sim.remove()  # the plain modules back, then their weights set to the quantized values
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, weight in quantized.items():
            modules[name].weight.copy_(weight)
    return names, size


def apply(ctx: RunContext) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    cfg, method = ctx.cfg, ctx.cfg.method
    settings = quant_settings(cfg, "lora")
    model = ctx.model.to(ctx.device)
    for p in model.parameters():
        p.requires_grad_(False)
    names, size = quantize_weights_in_place(model, settings)
    head = list(for_model(model).task_head())  # trained in full beside the adapters (pooler, classifier)
    config = LoraConfig(r=method.rank, lora_alpha=method.alpha, lora_dropout=method.dropout,
                        target_modules="^(" + "|".join(map(re.escape, names)) + ")$",
                        modules_to_save=head)
    peft_model = get_peft_model(model, config)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in peft_model.parameters())
    n_head = sum(p.numel() for n, p in peft_model.named_parameters()
                 if p.requires_grad and "modules_to_save" in n)
    groups = [{"name": "lora", "params": [p for n, p in peft_model.named_parameters()
                                          if p.requires_grad and "lora_" in n],
               "lr": method.lr.lora, "weight_decay": 0.0},
              {"name": "head", "params": [p for n, p in peft_model.named_parameters()
                                          if p.requires_grad and "modules_to_save" in n],
               "lr": method.lr.head, "weight_decay": 0.0}]
    ctx.summary["lora"] = {"rank": method.rank, "alpha": method.alpha, "dropout": method.dropout,
                           "adapted_layers": len(names),
                           "trainable_params": sum(p.numel() for p in trainable),
                           "head_params": n_head,
                           "trainable_share": sum(p.numel() for p in trainable) / n_params}
    ctx.summary["quantization"] = {**settings.to_dict(), "quantized_layers": names,
                                   "quantized_outputs": [], "model_size": size}
    ctx.summary["quantization"]["calibration"] = None  # weight-only: no data
    log.info("lora: W%s weights frozen in %d layers, rank %d adapters: %.3f%% of the parameters train",
             settings.weight.bits, len(names), method.rank, 100 * ctx.summary["lora"]["trainable_share"])
    ctx.summary["training"] = train(dataclasses.replace(ctx, model=peft_model), groups, method.train,
                                    "finetune", "method.train")
    return peft_model
