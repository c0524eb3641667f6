"""Quadapter scale sites on GPT-2: where a channel scale α goes and what it folds into.

Per block, by name (DESIGN §4): ``ln1_qkv`` (α on the input of ``attn.c_attn``, folded into
``ln_1``'s γ and β), ``ln2_fc`` (input of ``mlp.c_fc``, into ``ln_2``) and ``v_proj`` (input of
``attn.c_proj``, into the V output columns of ``attn.c_attn``: the attention output's channel j
is a convex combination of V's channel j, so scaling V's channel scales it). The GELU →
``mlp.c_proj`` path has no linear producer and cannot fold, so it is not offered.

Consumers must be ``QuantizedLayer``s of the given ``QuantSim`` (default sites wrap them all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from transformers.models.gpt2.modeling_gpt2 import GPT2Model
from transformers.pytorch_utils import Conv1D

from quadapter.adapters.scaling import ChannelScale, attach_scale, fold_scale
from quadapter.quant.sim import QuantizedLayer, QuantSim


def _input_axis(layer: nn.Module) -> int:
    """Input-channel axis of the weight: Conv1D is [in, out], nn.Linear [out, in]."""
    if isinstance(layer, Conv1D):
        return 0
    if isinstance(layer, nn.Linear):
        return 1
    raise TypeError(f"{type(layer).__name__} is not a Conv1D or nn.Linear layer")


def _unwrap(module: nn.Module) -> nn.Module:
    return module.layer if isinstance(module, QuantizedLayer) else module


@torch.no_grad()
def _scale_layernorm(ln: nn.LayerNorm, alpha: Tensor) -> None:
    ln.weight.mul_(alpha)
    ln.bias.mul_(alpha)


@torch.no_grad()
def _scale_v_columns(block: nn.Module, alpha: Tensor) -> None:
    """Multiply the V output channels of ``attn.c_attn`` (weight and bias) by α.

    If c_attn's weight is quantized, its range must follow (Q(W·α) = α·Q(W) only when the
    channel's quantization scale is also ×α): exact for per-channel fixed ranges; per-tensor
    or learnable ranges are refused before anything is changed.
    """
    wrapper = block.attn.c_attn
    layer = _unwrap(wrapper)
    out_axis = 1 - _input_axis(layer)
    d = alpha.numel()
    q = wrapper.weight_quantizer if isinstance(wrapper, QuantizedLayer) else None
    rescale = q is not None and (q.scale.numel() > 0 or q.learned_range is not None)
    if rescale and (q.granularity != "per_channel" or q.learned_range is not None):
        raise ValueError("v_proj cannot fold exactly into attn.c_attn: its weight quantizer must "
                         "be per_channel with fixed ranges (got "
                         f"{q.granularity}, learnable={q.parameterization})")
    layer.weight.narrow(out_axis, 2 * d, d).mul_(alpha.view([-1 if a == out_axis else 1
                                                             for a in range(2)]))
    layer.bias[2 * d:].mul_(alpha)
    if rescale:
        q.scale[2 * d:].mul_(alpha)  # zero points unchanged: the range scales with the weight


@dataclass(frozen=True)
class ScaleSite:
    consumer: str  # block-relative name of the consuming linear layer
    fold: Callable[[nn.Module, Tensor], None]  # (block, α): scale the producer in place


GPT2_SCALE_SITES: dict[str, ScaleSite] = {
    "ln1_qkv": ScaleSite("attn.c_attn", lambda block, a: _scale_layernorm(block.ln_1, a)),
    "ln2_fc": ScaleSite("mlp.c_fc", lambda block, a: _scale_layernorm(block.ln_2, a)),
    "v_proj": ScaleSite("attn.c_proj", _scale_v_columns),
}


def _blocks(model: nn.Module) -> list[str]:
    bodies = [(n, m) for n, m in model.named_modules() if isinstance(m, GPT2Model)]
    if len(bodies) != 1:
        raise ValueError(f"{type(model).__name__} holds {len(bodies)} GPT2Model bodies, not one")
    name, body = bodies[0]
    prefix = f"{name}." if name else ""
    return [f"{prefix}h.{i}" for i in range(len(body.h))]


def _site(name: str) -> ScaleSite:
    if name not in GPT2_SCALE_SITES:
        raise ValueError(f"unknown scale site {name!r}; known: {', '.join(GPT2_SCALE_SITES)}")
    return GPT2_SCALE_SITES[name]


def _consumer(sim: QuantSim, name: str) -> QuantizedLayer:
    layer = sim.layers.get(name)
    if layer is None:
        raise ValueError(f"scale site consumer {name!r} is not a QuantizedLayer of this QuantSim: "
                         "quantize it (e.g. default sites) before attaching scales")
    return layer


def site_consumers(sim: QuantSim, model: nn.Module, names: Sequence[str]) -> dict[str, tuple[str, QuantizedLayer]]:
    """``<block>.<site>`` -> (the consumer's name in ``sim.layers``, the consumer), validated."""
    sites = {name: _site(name) for name in names}  # validate all before changing anything
    return {f"{b}.{n}": (f"{b}.{s.consumer}", _consumer(sim, f"{b}.{s.consumer}"))
            for b in _blocks(model) for n, s in sites.items()}


def input_axis(layer: QuantizedLayer) -> int:
    """Input-channel axis of a consumer's weight (0: Conv1D [in, out], 1: nn.Linear [out, in])."""
    return _input_axis(_unwrap(layer))


def attach_scales(
    sim: QuantSim, model: nn.Module, names: Sequence[str],
    init: Tensor | Mapping[str, Tensor] | None = None,
) -> dict[str, ChannelScale]:
    """A ``ChannelScale`` at every named site of every block, keyed ``<block>.<site>``.

    ``init``: optional positive α, one tensor for every scale or a tensor per key (e.g.
    SmoothQuant's); default α = 1.
    """
    consumers = site_consumers(sim, model, names)
    if isinstance(init, Mapping) and set(init) != set(consumers):
        raise ValueError(f"init has scales for {sorted(init)}, the sites are {sorted(consumers)}")
    return {key: attach_scale(layer, _input_axis(layer.layer),
                              init[key] if isinstance(init, Mapping) else init)
            for key, (_, layer) in consumers.items()}


def fold_scales(sim: QuantSim, model: nn.Module, scales: dict[str, ChannelScale]) -> None:
    """Fold every scale into its producer and consumer; the model's function is unchanged."""
    for key, scale in scales.items():
        block_name, _, name = key.rpartition(".")
        site = _site(name)
        layer = _consumer(sim, f"{block_name}.{site.consumer}")
        if layer.input_scale is not scale:
            raise ValueError(f"scale {key!r} is not the one attached to {block_name}.{site.consumer}")
        block = model.get_submodule(block_name)
        fold_scale(layer, lambda alpha, block=block, site=site: site.fold(block, alpha))
