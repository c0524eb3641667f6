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

from quadapter.adapters.scaling import ChannelScale
from quadapter.adapters.smoothquant import smoothquant_alpha, weight_absmax
from quadapter.methods.quant_config import quant_settings
from quadapter.models.scale_sites import attach_scales, input_axis, site_consumers
from quadapter.quant.sim import QuantSim

if TYPE_CHECKING:
    from quadapter.methods import RunContext

log = logging.getLogger(__name__)


def smooth(ctx: RunContext, sim: QuantSim, sites: Sequence[str], migration: float,
           method: str) -> dict[str, ChannelScale]:
    """Attach SmoothQuant scales at ``sites`` and re-calibrate every quantizer with them in place."""
    from quadapter.methods import ptq  # imported here: ptq imports this module

    before = ctx.outlier_stats
    alphas = {}
    for key, (consumer, layer) in site_consumers(sim, ctx.model, sites).items():
        stats = before.get(f"{consumer}.input")
        if stats is None or stats.absmax is None:
            raise ValueError(f"SmoothQuant needs the calibrated input ranges of {consumer}: quantize "
                             "its activations (bits with an activation bit-width)")
        alphas[key] = smoothquant_alpha(stats.absmax, weight_absmax(layer.layer.weight,
                                                                    input_axis(layer)), migration)
    scales = attach_scales(sim, ctx.model, sites, init=alphas)
    settings = quant_settings(ctx.cfg, method)
    loader, _ = ptq.calibration_loader(ctx, settings)
    after = sim.calibrate(loader, lambda m, batch: m(batch.to(ctx.device)), diagnostics=True,
                          progress=False)
    ctx.outlier_stats = after
    consumers = {c for c, _ in site_consumers(sim, ctx.model, sites).values()}
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
