"""Post-training quantization: calibrate ranges on fine-tuning-set batches, then evaluate as is.

Calibration data is the task's (``Task.calibration``): ``quantizer.calibration.blocks`` seeded random
samples of ``dataset``'s ``quantizer.calibration.split`` — LM: blocks of ``eval.context`` tokens
(null: the model's maximum context, as for training); GLUE: training examples. The activation-outlier
statistics gathered on the way are logged once: a table with a row per site (W&B), a summary in
results.json and the worst site in the log.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Iterable

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from quadapter.methods.fp import finetune
from quadapter.methods.quant_config import QuantSettings, quant_settings
from quadapter.methods.saving import save_if_asked
from quadapter.methods.smoothing import smooth
from quadapter.models.regions import fold_scales
from quadapter.models.sites import quant_sites
from quadapter.quant.diagnostics import OutlierStats
from quadapter.quant.sim import QuantSim
from quadapter.quant.size import model_size
from quadapter.tracking import log_table

if TYPE_CHECKING:
    from quadapter.methods import RunContext

log = logging.getLogger(__name__)
OUTLIER_COLUMNS = ["site", "channels", "absmax", "median_absmax", "max_over_median", "kurtosis",
                   "top_channels"]


def check(cfg: DictConfig, method: str = "ptq") -> None:
    """Build the quantization settings as the run will (``quadapter.schema`` has already checked
    every key and combination): a disagreement between the two is caught here, before loading."""
    quant_settings(cfg, method)


def calibration_batches(ctx: RunContext, settings: QuantSettings) -> tuple[Iterable, dict]:
    """The task's seeded calibration batches from the fine-tuning dataset, and what they were."""
    return ctx.task.calibration(settings.calibration_split, settings.calibration_blocks,
                                settings.calibration_batch_size, ctx.cfg.seed)


def calibration_tensor(ctx: RunContext, method: str) -> tuple[Tensor, dict]:
    """The calibration batches as one tensor [blocks, ...] (what block-wise methods walk), and
    what they were."""
    loader, data = calibration_batches(ctx, quant_settings(ctx.cfg, method))
    return torch.cat(list(loader)), data


def outlier_report(stats: dict[str, OutlierStats], top_k: int, loggers: list) -> dict[str, Any]:
    """Summaries per site (for results.json), the W&B table and the worst site in the log."""
    summary = {site: s.summary(top_k) for site, s in stats.items()}
    rows = [[site, *(s[c] for c in OUTLIER_COLUMNS[1:-1]), str(s["top_channels"])]
            for site, s in summary.items()]
    log_table(loggers, "calibration/outliers", OUTLIER_COLUMNS, rows)
    if summary:
        site, worst = max(summary.items(), key=lambda kv: kv[1]["max_over_median"])
        log.info("worst activation-outlier site: %s (max/median %.1f, kurtosis %.1f, top channels "
                 "%s)", site, worst["max_over_median"], worst["kurtosis"], worst["top_channels"])
    return summary


def quantize(ctx: RunContext, method: str = "ptq") -> QuantSim:
    """Quantize ``ctx.model`` in place at the configured sites, calibrate it and record how.

    The returned sim is what methods that go on from PTQ (QAT) train; PTQ itself stops here.
    """
    settings = quant_settings(ctx.cfg, method)
    model = ctx.model.to(ctx.device)
    layers, outputs = quant_sites(model, settings.sites)
    sim = QuantSim(model, layers, outputs, weight=settings.weight, act=settings.act)
    loader, data = calibration_batches(ctx, settings)
    start = time.perf_counter()
    stats = sim.calibrate(loader, ctx.task.forward, diagnostics=True)
    data["seconds"] = round(time.perf_counter() - start, 3)
    record = settings.to_dict()
    record["calibration"].update(data)
    ctx.summary["quantization"] = {**record, "quantized_layers": list(sim.layers),
                                   "quantized_outputs": list(sim.outputs),
                                   "model_size": model_size(model, sim)}
    ctx.outlier_stats = stats
    ctx.summary["outliers"] = outlier_report(stats, settings.outlier_top_channels, ctx.loggers)
    log.info("%s: %d layers and %d outputs quantized (%s), calibrated on %d tokens in %.1f s",
             method, len(sim.layers), len(sim.outputs), ctx.cfg.bits.name, data["tokens"],
             data["seconds"])
    return sim


def apply(ctx: RunContext) -> nn.Module:
    """PTQ (of the FP fine-tuned model where the task fine-tunes first, ``fp.finetune``); with
    ``adapter=smoothquant``, SmoothQuant scales are attached, the ranges re-calibrated with them in
    place, and the scales folded into the producers and consumers."""
    training = finetune(ctx)
    if training is not None:
        ctx.summary["training"] = training
    sim = quantize(ctx)
    if ctx.cfg.adapter.name == "smoothquant":
        sites = list(ctx.cfg.adapter.sites)
        fold_scales(sim, ctx.model, smooth(ctx, sim, sites, ctx.cfg.adapter.migration, "ptq"))
        ctx.summary["smoothquant"]["folded"] = True
    save_if_asked(ctx, sim)
    return sim.model
