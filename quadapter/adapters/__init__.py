"""Adapters trained on a quantized model (Quadapter's channel scales) and their folding."""

from quadapter.adapters.scaling import ChannelScale, ProducerFold, attach_scale, fold_scale

__all__ = ["ChannelScale", "ProducerFold", "attach_scale", "fold_scale"]
