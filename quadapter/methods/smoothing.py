"""SmoothQuant scales on a calibrated ``QuantSim``: compute, attach, re-calibrate.

Shared by ``method=ptq adapter=smoothquant`` (then folded as is) and ``method=quadapter
adapter.init=smoothquant`` (then trained as Quadapter's α). Needs the per-channel activation
ranges of the first calibration (``ctx.outlier_stats``, gathered by ``ptq.quantize``); after the
scales are attached every quantizer is calibrated again, so the ranges describe the smoothed
activations and the weights W/α.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

import torch

from quadapter.adapters.scaling import ChannelScale
from quadapter.adapters.smoothquant import smoothquant_alpha, weight_absmax
from quadapter.methods.quant_config import quant_settings
from quadapter.models.regions import attach_scales, block_regions
from quadapter.models.sites import input_axis
from quadapter.quant.sim import QuantSim

if TYPE_CHECKING:
    from quadapter.methods import RunContext

log = logging.getLogger(__name__)


def smooth(ctx: RunContext, sim: QuantSim, sites: Sequence[str], migration: float,
           method: str) -> dict[str, ChannelScale]:
    """Attach SmoothQuant scales at ``sites`` and re-calibrate every quantizer with them in place.

    A region's consumers read one tensor, so its activation range is the max over their inputs'
    ranges and its weight range the max over their input rows (SmoothQuant's fused q/k/v); with
    grouped-query attention both are reduced to the KV channels α lives on.
    """
    from quadapter.methods import ptq  # imported here: ptq imports this module

    before = ctx.outlier_stats
    regions = block_regions(ctx.model, sites)
    alphas = {}
    for key, region in regions.items():
        stats = [before.get(f"{c}.input") for c in region.consumers]
        if any(s is None or s.absmax is None for s in stats):
            raise ValueError(f"SmoothQuant needs the calibrated input ranges of {', '.join(region.consumers)}: "
                             "quantize their activations (bits with an activation bit-width)")
        act = torch.stack([s.absmax for s in stats]).amax(0)
        weights = [sim.layers[c].layer.weight for c in region.consumers]
        w = torch.stack([weight_absmax(wt, input_axis(sim.layers[c].layer))
                         for c, wt in zip(region.consumers, weights)]).amax(0)
        alphas[key] = smoothquant_alpha(region.reduce(act), region.reduce(w.to(act.device)), migration)
    scales = attach_scales(sim, ctx.model, sites, init=alphas)
    settings = quant_settings(ctx.cfg, method)
    loader, _ = ptq.calibration_batches(ctx, settings)
    after = sim.calibrate(loader, ctx.task.forward, diagnostics=True, progress=False)
    ctx.outlier_stats = after
    consumers = {c for r in regions.values() for c in r.consumers}
    ratio = {name: (before[name].summary()["max_over_median"], after[name].summary()["max_over_median"])
             for name in (f"{c}.input" for c in consumers) if name in before and name in after}
    values = [a for a in alphas.values()]
    ctx.summary["smoothquant"] = {
        "sites": list(sites), "migration": float(migration),
        "alpha": {"min": float(min(a.min() for a in values)), "max": float(max(a.max() for a in values))},
        "max_over_median": {name: {"before": b, "after": a} for name, (b, a) in sorted(ratio.items())},
    }
    log.info("smoothquant: %d scales (m=%.2f); activation max/median %s", len(scales), migration,
             ", ".join(f"{n}: {b:.1f}->{a:.1f}" for n, (b, a) in sorted(ratio.items())))
    return scales
