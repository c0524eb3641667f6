"""Quadapter's learnable per-channel scales, and folding them into the surrounding layers.

A ``ChannelScale`` attached to the ``QuantizedLayer``s that read one producer's output
(``attach_scale``) makes each compute ``Q_a(x·α) @ Q_w(W/α)``: with quantizers off that is the
original layer, and only α learns. Once trained, ``fold_scale`` moves α into the producer of ``x``
(``scale_norm``: a norm's weight and bias; ``scale_output_channels``: a linear's output channels)
and 1/α into every consumer's stored weight, after which the model computes the same function
with no scale module left: inference costs nothing extra. Who produces what is the architecture
adapter's knowledge (``quadapter.models.regions``); this module stays generic.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from quadapter.quant.levels import LevelQuantizer
from quadapter.quant.sim import QuantizedLayer

ProducerFold = Callable[[Tensor], None]  # multiplies the producer's output channels by α in place


class ChannelScale(nn.Module):
    """α = exp(log_alpha) per producer channel: positive by construction and 1 at a zero init.

    ``index`` (optional) maps each consumer input channel to its α: with grouped-query attention
    the attention output has a channel per query head while V, the producer, has one per KV head,
    so one α serves every query head that shares that KV head. ``forward`` gives the consumers'
    α (``alpha()[index]``), ``alpha`` the producer's.
    """

    def __init__(self, channels: int, init: Tensor | None = None, index: Tensor | None = None) -> None:
        super().__init__()
        if init is None:
            log_alpha = torch.zeros(channels)
        else:
            init = torch.as_tensor(init, dtype=torch.float32)
            if init.shape != (channels,) or not bool((init > 0).all()):
                raise ValueError(f"ChannelScale init must be {channels} positive values, "
                                 f"got shape {tuple(init.shape)}")
            log_alpha = init.log()
        self.log_alpha = nn.Parameter(log_alpha)
        if index is not None and (index.dim() != 1 or int(index.min()) < 0 or int(index.max()) >= channels):
            raise ValueError(f"ChannelScale index must map consumer channels onto 0..{channels - 1}")
        self.register_buffer("index", index, persistent=False)

    def alpha(self) -> Tensor:
        """α on the producer's channels."""
        return self.log_alpha.exp()

    def forward(self) -> Tensor:
        """α on the consumers' input channels."""
        alpha = self.alpha()
        return alpha if self.index is None else alpha[self.index]

    @property
    def consumer_channels(self) -> int:
        return self.log_alpha.numel() if self.index is None else self.index.numel()

    def extra_repr(self) -> str:
        repeat = "" if self.index is None else f", consumer_channels={self.index.numel()}"
        return f"channels={self.log_alpha.numel()}{repeat}"


def attach_scale(layers: Sequence[QuantizedLayer], input_axes: Sequence[int], channels: int,
                 init: Tensor | None = None, index: Tensor | None = None) -> ChannelScale:
    """One new ``ChannelScale`` shared by ``layers`` (the consumers of one producer), on the first
    consumer's device. ``input_axes``: each consumer weight's input-channel axis."""
    for layer in layers:
        if not isinstance(layer, QuantizedLayer):
            raise TypeError(f"a channel scale needs QuantizedLayer consumers, not {type(layer).__name__}")
        if layer.input_scale is not None:
            raise ValueError("this layer already has an input scale")
    weight = layers[0].layer.weight
    scale = ChannelScale(channels, init, index).to(weight.device)
    for layer, axis in zip(layers, input_axes):
        if layer.layer.weight.shape[axis] != scale.consumer_channels:
            raise ValueError(f"a consumer has {layer.layer.weight.shape[axis]} input channels, the "
                             f"scale {scale.consumer_channels}")
        layer.set_input_scale(scale, axis)
    return scale


@torch.no_grad()
def fold_scale(layers: Sequence[QuantizedLayer], fold_into_producer: ProducerFold) -> None:
    """Fold the consumers' shared input scale away: producer ×α (callback), consumer weights ÷α.

    Each consumer's new weight is computed by the very expression its forward used
    (``scaled_weight``), so its quantized weight is bit-identical to the one before the fold.
    """
    scale = layers[0].input_scale
    if scale is None or any(layer.input_scale is not scale for layer in layers):
        raise ValueError("these layers do not share one input scale to fold")
    fold_into_producer(scale.alpha().detach())
    consumer_alpha = scale().detach()
    for layer in layers:
        weight = layer.layer.weight
        weight.copy_(layer.scaled_weight(weight, consumer_alpha))  # in place: bumps the cache key
        layer.set_input_scale(None)


@torch.no_grad()
def scale_norm(norm: nn.Module, alpha: Tensor) -> None:
    """A norm's output channels ×α: LayerNorm's γ and β, RMSNorm's weight (it has no bias)."""
    norm.weight.mul_(alpha)
    if getattr(norm, "bias", None) is not None:
        norm.bias.mul_(alpha)


def output_range(module: nn.Module):
    """The calibrated weight quantizer whose ranges must follow when ``module``'s output channels
    are scaled (None when its weight is not quantized or not calibrated yet).

    Q(W·α) = α·Q(W) only when each channel's quantization scales are also ×α: exact for
    per-channel and per-group fixed ranges; per-tensor or learnable ranges are refused
    (``ValueError``).
    """
    q = module.weight_quantizer if isinstance(module, QuantizedLayer) else None
    if isinstance(q, LevelQuantizer):  # α and Δ are recomputed from W: per channel they follow it
        if q.granularity != "per_channel":
            raise ValueError("a scale cannot fold exactly into a linear producer with per_tensor "
                             f"{q.bits} weights: use quantizer.weight.granularity=per_channel")
        return None
    if q is None or (q.scale.numel() == 0 and q.learned_range is None):
        return None
    if q.granularity not in ("per_channel", "per_group") or q.learned_range is not None:
        raise ValueError("a scale cannot fold exactly into a quantized linear producer unless its "
                         f"weight quantizer is per_channel or per_group with fixed ranges (got "
                         f"{q.granularity}, learnable={q.parameterization})")
    return q


@torch.no_grad()
def scale_output_channels(module: nn.Module, alpha: Tensor, out_axis: int, start: int = 0) -> None:
    """A linear layer's output channels ``start .. start+len(α)`` ×α (weight and bias).

    ``module`` is the layer or its ``QuantizedLayer``; a quantized weight's range follows
    (``output_range``), checked before anything is changed.
    """
    q = output_range(module)
    layer = module.layer if isinstance(module, QuantizedLayer) else module
    d = alpha.numel()
    shape = [-1 if a == out_axis else 1 for a in range(layer.weight.dim())]
    layer.weight.narrow(out_axis, start, d).mul_(alpha.view(shape))
    if layer.bias is not None:
        layer.bias[start:start + d].mul_(alpha)
    if q is not None:  # zero points unchanged: the range scales with the weight
        per_output = q.scale.view(layer.weight.shape[out_axis], -1)  # per_group: [out, groups]
        per_output[start:start + d].mul_(alpha[:, None])
