"""Quadapter's learnable per-channel scales, and folding them into the surrounding layers.

A ``ChannelScale`` attached to a ``QuantizedLayer`` (``set_input_scale``) makes it compute
``Q_a(x·α) @ Q_w(W/α)``: with quantizers off that is the original layer, and only α learns.
Once trained, ``fold_scale`` moves α into the producer of ``x`` (a LayerNorm's γ and β, or the
output columns of a linear layer) and 1/α into the consumer's stored weight, after which the
model computes the same function with no scale module left: inference costs nothing extra.
Model specifics (who produces what) live in ``quadapter.models``; this module stays generic.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from quadapter.quant.sim import QuantizedLayer

ProducerFold = Callable[[Tensor], None]  # multiplies the producer's output channels by α in place


class ChannelScale(nn.Module):
    """α = exp(log_alpha) per channel: positive by construction and 1 at a zero init."""

    def __init__(self, channels: int, init: Tensor | None = None) -> None:
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

    def forward(self) -> Tensor:
        return self.log_alpha.exp()

    def extra_repr(self) -> str:
        return f"channels={self.log_alpha.numel()}"


def attach_scale(layer: QuantizedLayer, input_axis: int, init: Tensor | None = None) -> ChannelScale:
    """A new ``ChannelScale`` on ``layer``'s input channels, on the weight's device."""
    if not isinstance(layer, QuantizedLayer):
        raise TypeError(f"a channel scale needs a QuantizedLayer consumer, not "
                        f"{type(layer).__name__}")
    if layer.input_scale is not None:
        raise ValueError("this layer already has an input scale")
    weight = layer.layer.weight
    scale = ChannelScale(weight.shape[input_axis], init).to(weight.device)
    layer.set_input_scale(scale, input_axis)
    return scale


@torch.no_grad()
def fold_scale(layer: QuantizedLayer, fold_into_producer: ProducerFold) -> None:
    """Fold ``layer``'s input scale away: producer ×α (callback), consumer weight rows ÷α.

    The consumer's new weight is computed by the very expression its forward used
    (``scaled_weight``), so its quantized weight is bit-identical to the one before the fold.
    """
    if layer.input_scale is None:
        raise ValueError("this layer has no input scale to fold")
    alpha = layer.input_scale().detach()
    fold_into_producer(alpha)
    weight = layer.layer.weight
    weight.copy_(layer.scaled_weight(weight, alpha))  # in place: bumps the cache's version key
    layer.set_input_scale(None)
