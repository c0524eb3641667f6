"""Weight-only post-training quantization by block reconstruction, with the joint and downstream
objectives of Shabanovi, Wiest, Golkov, Cremers, Pfeil, "Interactions Across Blocks in
Post-Training Quantization of Large Language Models" (2024).

The model is quantized as ``method=ptq`` would (round-to-nearest on the configured grid), then the
block engine (``blockwise.reconstruct_blocks``) walks units of ``unit_size`` consecutive blocks:
each unit's quantized output — or, with ``target_offset`` m > 0, that output pushed through the
next m blocks in full precision — is fitted by L2 to the full-precision one on the calibration
blocks. ``unit_size=1, target_offset=0`` is the usual block-wise baseline (blocks independent);
k > 1 optimizes k blocks jointly; m > 0 targets what later blocks make of the unit's output.

What learns is config (``method.learn``): ``rounding`` (AdaRound offsets per weight, with their
regulariser), ``weights`` (the FP weights behind the quantizer, straight-through) and/or
``scales`` (the weight quantizers' learnable ranges). A unit that would end worse than it started
keeps its start (``reverted``). At the end every quantized weight is replaced by its quantized
value, so the saved model's weights lie exactly on the grids in ``quantizer_encodings.json``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor, nn

from quadapter.methods import ptq
from quadapter.methods.blockwise import capture_block_inputs, reconstruct_blocks, toggled
from quadapter.methods.saving import QUANTIZED_DIR, save_quantized
from quadapter.models.arch import for_model
from quadapter.quant import adaround
from quadapter.quant.sim import QuantizedLayer, QuantSim
from quadapter.tracking import log_metrics

if TYPE_CHECKING:
    from quadapter.methods import RunContext

log = logging.getLogger(__name__)
LEARNABLE = ("rounding", "weights", "scales")


def check(cfg) -> None:
    ptq.check(cfg, "blockptq")


def _unit_layers(sim: QuantSim, names: dict[int, str], unit: Sequence[nn.Module]) -> list[QuantizedLayer]:
    prefixes = tuple(names[id(block)] + "." for block in unit)
    return [w for n, w in sim.layers.items() if n.startswith(prefixes)
            and w.weight_quantizer is not None and w.weight_quantizer.enabled]


@torch.no_grad()
def settle_on_grid(sim: QuantSim) -> None:
    """Replace every quantized weight by its quantized value and go back to round-to-nearest: the
    model then computes what it did, with weights that re-quantize to themselves."""
    for wrapper in sim.layers.values():
        q = wrapper.weight_quantizer
        if q is None or not q.enabled:
            continue
        weight = wrapper.layer.weight
        weight.copy_(q(weight))
        weight.requires_grad_(False)
        for p in q.range_parameters():
            p.requires_grad_(False)
        if getattr(q, "rounding", None) is not None:
            q.set_rounding(None)


def apply(ctx: RunContext) -> nn.Module:
    cfg, method, model = ctx.cfg, ctx.cfg.method, ctx.model
    learn = list(method.learn)
    sim = ptq.quantize(ctx, "blockptq")
    for p in model.parameters():
        p.requires_grad_(False)
    batches, data = ptq.calibration_tensor(ctx, "blockptq")
    named = for_model(model).block_list(model)
    names = {id(block): name for name, block in named}
    blocks = [block for _, block in named]
    model.eval()
    clock = time.perf_counter()
    offload = method.offload_dir and ctx.run_dir / method.offload_dir
    with toggled(sim.enable, False):
        inputs, kwargs = capture_block_inputs(model, blocks, batches, method.batch_size, offload)
    roundings: dict[int, list[adaround.AdaRound]] = {}

    def trainable(unit: Sequence[nn.Module]) -> list[dict]:
        layers = _unit_layers(sim, names, unit)
        groups = []
        if "rounding" in learn:
            found = [adaround.attach(w.weight_quantizer, w.layer.weight) for w in layers]
            roundings[id(unit[0])] = found
            groups.append({"params": [r.v for r in found], "lr": method.lr.rounding})
        if "weights" in learn:
            groups.append({"params": [w.layer.weight.requires_grad_(True) for w in layers],
                           "lr": method.lr.weights})
        if "scales" in learn:
            groups.append({"params": [p.requires_grad_(True) for w in layers
                                      for p in w.weight_quantizer.range_parameters()],
                           "lr": method.lr.scales})
        return groups

    ada = method.adaround

    def penalty(unit: Sequence[nn.Module], progress: float) -> Tensor | None:
        beta = adaround.beta_at(progress, ada.beta_start, ada.beta_end, ada.warmup)
        found = roundings.get(id(unit[0]), [])
        if beta is None or not found:
            return None
        total = sum(r.regularizer(beta) for r in found)
        return ada.reg_weight * total / sum(r.v.numel() for r in found)

    def finish(unit: Sequence[nn.Module]) -> None:
        for r in roundings.get(id(unit[0]), []):
            r.harden()

    report = reconstruct_blocks(
        blocks, inputs, kwargs, trainable, lambda on: toggled(sim.enable, on), steps=method.steps,
        batch_size=method.batch_size, unit_size=method.unit_size, target_offset=method.target_offset,
        seed=cfg.seed, offload_dir=offload,
        penalty=penalty if "rounding" in learn else None, finish=finish,
        quantized_inputs=method.inputs == "quantized", revert_if_worse=method.revert_if_worse)
    settle_on_grid(sim)
    for unit in report:
        unit["block"] = names[id(blocks[unit["unit"]])]
    summary = {"learn": learn, "unit_size": method.unit_size, "target_offset": method.target_offset,
               "inputs": method.inputs, "steps": method.steps, "batch_size": method.batch_size,
               "bits": cfg.bits.weight, "granularity": cfg.quantizer.weight.granularity,
               "group_size": cfg.quantizer.weight.get("group_size"),
               "effective_bits": ctx.summary["quantization"]["model_size"]["bits_per_quantized_weight"],
               "calibration": data, "units": report,
               "reverted_units": sum(bool(u.get("reverted")) for u in report),
               "seconds": round(time.perf_counter() - clock, 3),
               "peak_memory_mb": max(u["peak_memory_mb"] for u in report), "memory": report[0]["memory"]}
    ctx.summary["blockptq"] = summary
    log_metrics(ctx.loggers, {f"blockptq/unit{u['unit']}/l2_{k}": u[f"l2_{k}"]
                              for u in report for k in ("before", "after")}, step=0)
    if method.save_quantized:
        summary["saved"] = str(save_quantized(sim, model, ctx.tokenizer, ctx.run_dir / QUANTIZED_DIR))
    log.info("blockptq: %d units of %d block(s), target +%d, learned %s in %.1f s (peak %.0f MB); L2 %.4g -> %.4g "
             "(mean over units)", len(report), method.unit_size, method.target_offset, "+".join(learn),
             summary["seconds"], summary["peak_memory_mb"],
             sum(u["l2_before"] for u in report) / len(report), sum(u["l2_after"] for u in report) / len(report))
    return sim.model
