"""Adapters trained on a quantized model (Quadapter's channel scales) and their folding."""

from quadapter.adapters.scaling import (
    ChannelScale,
    ProducerFold,
    attach_scale,
    fold_scale,
    output_range,
    scale_norm,
    scale_output_channels,
)

__all__ = ["ChannelScale", "ProducerFold", "attach_scale", "fold_scale", "output_range", "scale_norm",
           "scale_output_channels"]
