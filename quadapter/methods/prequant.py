"""PreQuant (Gong et al., Findings of ACL 2023): quantize before fine-tuning.

1. Every block linear of the *pretrained* model is quantized task-agnostically (``quantizer``,
   ``bits``): weights from themselves; activation ranges, where ``bits.act`` is set, and the
   outlier statistics from ``quantizer.calibration.blocks`` sequences of ``method.outlier_text``
   (a text corpus, never task data) cut to ``task.max_length`` tokens.
2. Per weight matrix, ``method.trainable_fraction`` of its input channels (columns) become
   full-precision trainable parameters, chosen by ``method.criterion``: ``activation`` (largest
   input absmax on that text: the outlier channels), ``weight_norm`` (largest column L2 norm) or
   ``random`` (the control). The quantized rest stays frozen (``quant.outlier_columns``).
3. Those columns and the task head (``method.lr``: the family's head sites, BERT's pooler and new
   classifier) fine-tune on the task (``method.train``).
The paper's exact outlier criterion is not available offline; the criterion is a config so the
ablation can tell what choosing outliers is worth. The summary records the trainable share and the
effective bits (trainable columns count as 32-bit).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from quadapter.data import token_ids
from quadapter.data.datamodule import TokenBlocks
from quadapter.errors import ConfigError
from quadapter.methods.ptq import outlier_report
from quadapter.methods.quant_config import quant_settings
from quadapter.methods.training import train
from quadapter.models.arch import for_model
from quadapter.models.sites import input_axis, quant_sites
from quadapter.quant.diagnostics import OutlierStats
from quadapter.quant.levels import STORAGE_BITS
from quadapter.quant.outlier_columns import attach_outlier_columns, top_columns
from quadapter.quant.sim import QuantSim
from quadapter.quant.size import model_size

if TYPE_CHECKING:
    from quadapter.methods import RunContext

log = logging.getLogger(__name__)
CRITERIA = ("activation", "weight_norm", "random")


def check(cfg: DictConfig) -> None:
    """Weights must be quantized (PreQuant's point); the rest as for PTQ."""
    settings = quant_settings(cfg, "prequant")
    if settings.weight is None:
        raise ConfigError("config error: method=prequant quantizes the pretrained weights: give a "
                          "weight bit-width (e.g. bits=w4)")


def _text_batches(ctx: RunContext, count: int, batch_size: int) -> tuple[DataLoader, dict]:
    """``count`` seeded sequences of ``task.max_length`` tokens of the task-agnostic text."""
    cfg, spec = ctx.cfg, ctx.cfg.method.outlier_text
    length = cfg.task.max_length
    ids = token_ids(spec, spec.split, ctx.tokenizer, cfg.paths.data_dir, ctx.cache_dir)
    blocks = TokenBlocks(ids, length, f"method.outlier_text ({spec.name!r}, split {spec.split!r})",
                         "use a larger split or a smaller task.max_length")
    n = min(count, len(blocks))
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(cfg.seed))[:n]
    data = [blocks[i] for i in order.tolist()]
    info = {"dataset": spec.name, "split": spec.split, "sequences": n, "length": length,
            "tokens": n * length}
    return DataLoader(data, batch_size=batch_size), info


def _scores(criterion: str, weight: torch.Tensor, axis: int, stats: OutlierStats | None,
            generator: torch.Generator) -> torch.Tensor:
    """One score per input channel: the larger, the likelier the column stays full precision."""
    if criterion == "activation":
        return stats.absmax.float().cpu()
    if criterion == "weight_norm":
        return weight.detach().float().norm(dim=1 - axis).cpu()
    return torch.rand(weight.shape[axis], generator=generator)


def apply(ctx: RunContext) -> nn.Module:
    cfg, method = ctx.cfg, ctx.cfg.method
    settings = quant_settings(cfg, "prequant")
    model = ctx.model.to(ctx.device)
    for p in model.parameters():
        p.requires_grad_(False)
    layers, outputs = quant_sites(model, settings.sites)
    sim = QuantSim(model, layers, outputs, weight=settings.weight, act=settings.act)
    loader, text = _text_batches(ctx, settings.calibration_blocks, settings.calibration_batch_size)
    stats = {name: OutlierStats() for name in sim.layers}  # every layer's input, act quantized or not
    hooks = [sim.layers[name].register_forward_pre_hook(lambda m, args, s=s: s.observe(args[0]))
             for name, s in stats.items()]
    try:
        sim.calibrate(loader, lambda m, batch: m(input_ids=batch.to(ctx.device)), progress=False)
        if not sim.activation_quantizers():  # calibrate ran no forward pass: observe the text here
            with torch.no_grad():
                for batch in loader:
                    model(input_ids=batch.to(ctx.device))
    finally:
        for hook in hooks:
            hook.remove()

    size = model_size(model, sim)  # before the columns take the weights' place
    generator = torch.Generator().manual_seed(cfg.seed)
    columns, trainable_columns = {}, []
    total_weights = kept = 0
    for name, wrapper in sim.layers.items():
        layer, axis = wrapper.layer, input_axis(wrapper.layer)
        k = max(1, round(method.trainable_fraction * layer.weight.shape[axis]))
        chosen = top_columns(_scores(method.criterion, layer.weight, axis, stats[name], generator), k)
        with torch.no_grad():
            quantized = wrapper.weight_quantizer(layer.weight)
        wrapper.weight_quantizer.enabled = False  # the frozen quantized values are the weight now
        part = attach_outlier_columns(layer, quantized, chosen.to(layer.weight.device), axis)
        trainable_columns.append(part.values)
        columns[name] = chosen.tolist()
        total_weights += layer.weight.numel()
        kept += part.values.numel()
    head = [p for path in for_model(model).task_head() for p in model.get_submodule(path).parameters()]
    for p in head:
        p.requires_grad_(True)
    groups = [{"name": "columns", "params": trainable_columns, "lr": method.lr.columns,
               "weight_decay": 0.0},
              {"name": "head", "params": head, "lr": method.lr.head, "weight_decay": 0.0}]
    n_params = sum(p.numel() for p in model.parameters())
    n_head = sum(p.numel() for p in head)
    bits = settings.weight.bits
    grid_bits = STORAGE_BITS.get(bits, bits)  # ternary: 2, binary: 1
    ctx.summary["prequant"] = {
        "criterion": method.criterion, "trainable_fraction": method.trainable_fraction,
        "outlier_text": text, "columns": columns,
        "trainable_params": kept + n_head, "head_params": n_head,
        "trainable_share": (kept + n_head) / n_params,
        "quantized_weights": total_weights,
        "effective_weight_bits": (grid_bits * (total_weights - kept) + 32 * kept) / total_weights,
    }
    record = settings.to_dict()
    record["calibration"] = {**text, "batch_size": settings.calibration_batch_size}  # not task data
    ctx.summary["quantization"] = {**record, "quantized_layers": list(sim.layers),
                                   "quantized_outputs": list(sim.outputs), "model_size": size}
    ctx.summary["outliers"] = outlier_report(stats, settings.outlier_top_channels, ctx.loggers)
    log.info("prequant: W%s, %d columns of %d matrices full precision (%s), trainable %.3f%% of "
             "the parameters, %.3f effective weight bits", bits, sum(map(len, columns.values())),
             len(columns), method.criterion, 100 * ctx.summary["prequant"]["trainable_share"],
             ctx.summary["prequant"]["effective_weight_bits"])
    ctx.summary["training"] = train(ctx, groups, method.train, "finetune", "method.train")
    return model
