"""Quadapter (Park, You, Nagel, Chang, Findings of EMNLP 2022): learn only channel scales.

A per-channel α before each configured activation quantizer (and 1/α in the consumer's weight)
reshapes the activation so it quantizes well, while every model weight stays frozen — which is
why it does not overfit the fine-tuning set the way QAT does. Two phases, each switchable:
1. block-wise: per block, α minimizes the L2 between the quantized and the FP block output on
   calibration inputs (``blockwise.reconstruct_blocks``);
2. end-to-end: α trains on the LM loss (``training.train``), with the overfitting curves.
A run resumed after an interruption skips a finished phase 1 (``checkpoints/blockwise/done.pt``)
and phase 2 continues from its Lightning checkpoint.
Finally α folds into the producers (norm weights, a linear's output channels) and the consumers'
input channels, so inference costs nothing extra.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from quadapter.checkpoints import load_phase, save_phase
from quadapter.methods import ptq
from quadapter.methods.blockwise import capture_block_inputs, reconstruct_blocks, toggled
from quadapter.methods.saving import FOLDED_DIR, save_quantized
from quadapter.methods.smoothing import smooth
from quadapter.methods.training import RandomState, train
from quadapter.models.arch import for_model
from quadapter.models.regions import attach_scales, fold_scales
from quadapter.tracking import log_metrics

if TYPE_CHECKING:
    from quadapter.methods import RunContext

log = logging.getLogger(__name__)
INITS = ("ones", "smoothquant")  # adapter.init: α = 1, or SmoothQuant's α from calibration ranges


def check(cfg) -> None:
    """The quantization settings as the run builds them; adapter and method keys, and how they
    combine (adapter=quadapter, sites, init, learn_ranges), are ``quadapter.schema``'s."""
    ptq.check(cfg, "quadapter")


def _range_params(sim, prefix: str = "") -> list[nn.Parameter]:
    return [p for name, q in sim.activation_quantizers().items() if name.startswith(prefix)
            for p in q.range_parameters()]


def _blockwise(ctx: RunContext, sim, scales: dict) -> dict:
    """Phase 1; its summary. Recorded in ``checkpoints/blockwise/done.pt`` when done, so a resumed
    run restores α (and the ranges), the summary and the RNG state instead of recalibrating."""
    cfg, method, model = ctx.cfg, ctx.cfg.method, ctx.model
    bw = method.blockwise
    done = Path(ctx.run_dir) / "checkpoints" / "blockwise" / "done.pt"
    trained = {f"{site}.{n}": p for site, scale in scales.items() for n, p in scale.named_parameters()}
    if method.learn_ranges:
        trained |= {f"{name}.range{i}": p for name, q in sim.activation_quantizers().items()
                    for i, p in enumerate(q.range_parameters())}
    restored = load_phase(done, trained)
    if restored is not None:  # a resumed run: phase 1 finished before the interruption
        summary, rng = restored
        RandomState().load_state_dict(rng)
        log.info("block-wise phase restored from %s (finished in an earlier attempt)", done)
        return summary
    batches, data = ptq.calibration_tensor(ctx, "quadapter")
    names, blocks = map(list, zip(*for_model(model).block_list(model)))
    with toggled(sim.enable, False):
        inputs, kwargs = capture_block_inputs(model, blocks, batches, bw.batch_size,
                                              bw.offload_dir and ctx.run_dir / bw.offload_dir)

    def trainable(unit):
        prefixes = [names[blocks.index(b)] + "." for b in unit]
        alphas = [p for key, s in scales.items() if any(key.startswith(pf) for pf in prefixes)
                  for p in s.parameters()]
        ranges = [p for pf in prefixes for p in _range_params(sim, pf)] if method.learn_ranges else []
        return [{"params": alphas, "lr": bw.lr}, {"params": ranges, "lr": bw.lr_ranges}]

    report = reconstruct_blocks(blocks, inputs, kwargs, trainable,
                                lambda on: toggled(sim.enable, on), steps=bw.steps,
                                batch_size=bw.batch_size, seed=cfg.seed)
    summary = {"calibration": data, "steps": bw.steps, "units": report}
    save_phase(done, trained, summary, RandomState().state_dict())
    return summary


def apply(ctx: RunContext) -> nn.Module:
    cfg, method = ctx.cfg, ctx.cfg.method
    sim = ptq.quantize(ctx, "quadapter")
    model = ctx.model
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.adapter.get("init", "ones") == "smoothquant":  # SmoothQuant α, ranges re-calibrated
        scales = smooth(ctx, sim, list(cfg.adapter.sites), cfg.adapter.migration, "quadapter")
    else:
        scales = attach_scales(sim, model, list(cfg.adapter.sites))
    for scale in scales.values():
        scale.to(ctx.device).requires_grad_(True)
    if method.learn_ranges:
        for p in _range_params(sim):
            p.requires_grad_(True)
    summary = ctx.summary.setdefault("quadapter", {"sites": list(cfg.adapter.sites),
                                                   "init": cfg.adapter.get("init", "ones")})

    if method.blockwise.enabled:
        summary["blockwise"] = _blockwise(ctx, sim, scales)
        log_metrics(ctx.loggers, {f"phase1/block{r['unit']}/l2_{k}": r[f"l2_{k}"]
                                  for r in summary["blockwise"]["units"] for k in ("before", "after")},
                    step=0)

    if method.e2e.enabled:
        groups = [{"name": "alpha", "params": [p for s in scales.values() for p in s.parameters()],
                   "lr": method.lr.alpha, "weight_decay": 0.0},
                  {"name": "ranges", "params": _range_params(sim) if method.learn_ranges else [],
                   "lr": method.lr.ranges, "weight_decay": 0.0}]
        ctx.summary["training"] = train(ctx, groups, method.e2e, "e2e", "method.e2e")

    log_alpha = torch.cat([s.log_alpha.detach().flatten().cpu() for s in scales.values()])
    summary["alpha"] = {"min": float(log_alpha.exp().min()), "max": float(log_alpha.exp().max()),
                        "mean_abs_log": float(log_alpha.abs().mean())}
    fold_scales(sim, model, scales)
    summary["folded"] = True
    if method.save_folded:
        summary["saved"] = str(save_quantized(sim, model, ctx.tokenizer, ctx.run_dir / FOLDED_DIR))
    log.info("quadapter: %d scales folded (alpha in [%.3g, %.3g])", len(scales),
             summary["alpha"]["min"], summary["alpha"]["max"])
    return model
