"""GPTQ (Frantar et al., ICLR 2023): weight-only post-training quantization with second-order error
feedback, the baseline multi-block PTQ is compared against beside round-to-nearest (``method=ptq``).

The model is quantized as ``method=ptq`` would (sites, ranges from the weights), then block by
block in order: the block's input Hessians ``Σ x xᵀ`` are collected at every quantized linear from
the calibration sequences as they leave the already quantized blocks before it (so later blocks
correct what earlier ones lost), every linear's weight is replaced by its GPTQ quantization
(``quadapter.quant.gptq``), and the quantized block's outputs become the next block's inputs. All
linears of a block see the same block inputs (not the reference's "true sequential" order inside
a block). The weights end exactly on their quantizers' grids, which keep the ranges GPTQ used.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from quadapter.methods import ptq
from quadapter.methods.blockwise import capture_block_inputs, run_blocks, toggled
from quadapter.methods.quant_config import quant_settings
from quadapter.methods.saving import save_if_asked
from quadapter.models.arch import for_model
from quadapter.quant.gptq import gptq_quantize

if TYPE_CHECKING:
    from quadapter.methods import RunContext

log = logging.getLogger(__name__)


def check(cfg) -> None:
    quant_settings(cfg, "gptq")


def _input_hessians(block: nn.Module, layers: dict[str, nn.Module], x: Tensor, kwargs: dict[str, Any],
                    batch_size: int) -> dict[str, Tensor]:
    """``Σ x xᵀ`` of every layer's input over the block's calibration inputs ``x`` (float64 sums)."""
    hessians: dict[str, Tensor] = {}

    def accumulate(name: str, inputs: Tensor) -> None:
        rows = inputs.detach().reshape(-1, inputs.shape[-1]).double()
        hessians[name] = rows.T @ rows + hessians.get(name, 0)

    hooks = [layer.register_forward_pre_hook(lambda m, args, n=n: accumulate(n, args[0]))
             for n, layer in layers.items()]
    try:
        run_blocks([block], x, kwargs, batch_size)
    finally:
        for hook in hooks:
            hook.remove()
    return hessians


@torch.no_grad()
def apply(ctx: RunContext) -> nn.Module:
    method, model = ctx.cfg.method, ctx.model
    sim = ptq.quantize(ctx, "gptq")
    for p in model.parameters():
        p.requires_grad_(False)
    batches, data = ptq.calibration_tensor(ctx, "gptq")
    names, blocks = map(list, zip(*for_model(model).block_list(model)))
    model.eval()
    with toggled(sim.enable, False):
        x, kwargs = capture_block_inputs(model, blocks, batches, method.batch_size)
    device = next(model.parameters()).device
    kwargs = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in kwargs.items()}
    units, layers = [], {}
    for name, block in zip(names, blocks, strict=True):
        start = time.perf_counter()
        wrappers = {n: w for n, w in sim.layers.items() if n.startswith(name + ".")
                    and w.weight_quantizer is not None and w.weight_quantizer.enabled}
        with toggled(sim.enable, False):  # the block in full precision, fed the quantized inputs
            hessians = _input_hessians(block, wrappers, x, kwargs, method.batch_size)
        proxy = 0.0
        for n, wrapper in wrappers.items():
            weight = wrapper.layer.weight
            result = gptq_quantize(weight, hessians[n].to(torch.float32), wrapper.weight_quantizer,
                                   block_size=method.block_size, damp=method.damp, act_order=method.act_order)
            weight.copy_(result.weight)
            layers[n] = {"proxy_loss": result.proxy_loss, "dead_columns": result.dead_columns}
            proxy += result.proxy_loss
        x = run_blocks([block], x, kwargs, method.batch_size)  # quantized now: the next block's inputs
        units.append({"block": name, "layers": len(wrappers), "proxy_loss": proxy,
                      "seconds": round(time.perf_counter() - start, 3)})
        log.info("gptq %s: %d layers, proxy loss %.4g, %.1f s", name, len(wrappers), proxy, units[-1]["seconds"])
    ctx.summary["gptq"] = {"block_size": method.block_size, "damp": method.damp, "act_order": method.act_order,
                           "calibration": data, "blocks": units, "layers": layers}
    save_if_asked(ctx, sim)
    return sim.model
