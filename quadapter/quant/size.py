"""The storage a fake-quantized model would take deployed: what its compression claims are about.

Every quantized weight counts its grid's bits (a ternary weight 2, a binary one 1), plus its
quantization parameters: a 32-bit scale per range (per tensor, channel or group) and, on an
asymmetric grid, an integer zero point of the weight's bit-width per range. Everything else the
model holds (embeddings, LayerNorms, biases, the head, weights left unquantized) counts at its own
dtype's width: it stays in full precision. Buffers are not counted (position ids, masks).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from quadapter.quant.levels import LevelQuantizer
from quadapter.quant.sim import QuantSim


def _ranges(q: Any, weight_shape: tuple[int, ...]) -> int:
    """How many scales a weight quantizer stores for a weight of this shape."""
    if q.granularity == "per_tensor":
        return 1
    out_channels = weight_shape[q.axis % len(weight_shape)]
    if q.granularity == "per_group":
        return out_channels * (weight_shape[1 - q.axis % 2] // q.group_size)
    return out_channels


def model_size(model: nn.Module, sim: QuantSim) -> dict[str, Any]:
    """Bits the model takes with ``sim``'s weight quantizers applied, against its FP32 size.

    Returns ``bits`` (total), ``fp32_bits``, ``compression`` (fp32_bits / bits), the parameter counts
    quantized and left in full precision, and ``bits_per_quantized_weight`` (grid bits plus the
    quantization parameters' share).
    """
    quantized: dict[int, tuple[Any, Any]] = {}
    for wrapper in sim.layers.values():
        q = wrapper.weight_quantizer
        if q is not None and q.enabled:
            quantized[id(wrapper.layer.weight)] = (wrapper.layer.weight, q)
    seen: set[int] = set()
    total = fp32 = quantized_params = fp_params = 0
    weight_bits = 0
    for p in model.parameters():
        if id(p) in seen:  # tied weights are stored once
            continue
        seen.add(id(p))
        fp32 += 32 * p.numel()
        if id(p) in quantized:
            _, q = quantized[id(p)]
            grid = q.storage_bits if isinstance(q, LevelQuantizer) else q.bits
            ranges = _ranges(q, tuple(p.shape))
            zero_points = 0 if isinstance(q, LevelQuantizer) or q.symmetric else ranges * q.bits
            bits = grid * p.numel() + 32 * ranges + zero_points
            weight_bits += bits
            quantized_params += p.numel()
        else:
            bits = p.element_size() * 8 * p.numel()
            fp_params += p.numel()
        total += bits
    return {
        "bits": total, "fp32_bits": fp32, "compression": fp32 / total,
        "megabytes": total / 8 / 2**20, "fp32_megabytes": fp32 / 8 / 2**20,
        "quantized_params": quantized_params, "full_precision_params": fp_params,
        "bits_per_quantized_weight": weight_bits / quantized_params if quantized_params else None,
    }
