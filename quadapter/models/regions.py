"""Scale regions on a loaded model: where a channel scale α goes and what it folds into.

The family's architecture adapter declares each region (``models.arch``: a producer, the consumer
sites that read its output, GQA repetition); this module finds them in every block of a model,
attaches one ``ChannelScale`` per region and block (shared by its consumers), folds it back
(``adapters.scaling``) and reduces per-consumer statistics to α's channels for SmoothQuant.
Consumers must be ``QuantizedLayer``s of the given ``QuantSim``; the outlier profile uses the same
regions on a plain model (``scale_region``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from quadapter.adapters.scaling import (
    ChannelScale,
    attach_scale,
    fold_scale,
    output_range,
    scale_norm,
    scale_output_channels,
)
from quadapter.models.arch import Architecture, LinearOutput, Norm, Region, for_model
from quadapter.models.kronecker import KroneckerLinear
from quadapter.models.sites import input_axis
from quadapter.quant.sim import QuantizedLayer, QuantSim


def _unwrap(module: nn.Module) -> nn.Module:
    return module.layer if isinstance(module, QuantizedLayer) else module


@dataclass
class BlockRegion:
    """One region in one block: its producer, its consumers (full module names) and α's shape."""

    key: str  # <block>.<region>, e.g. transformer.h.0.ln1_qkv
    region: Region
    block: nn.Module
    producer: nn.Module  # the norm, or the linear (possibly a QuantizedLayer wrapper)
    start: int  # first producer output channel scaled (a linear's channel slice)
    channels: int  # number of α
    consumers: list[str]  # full module names
    index: Tensor | None  # consumer input channel -> α channel (grouped-query attention)

    def fold_producer(self, alpha: Tensor) -> None:
        """The producer's output channels ×α."""
        if isinstance(self.region.producer, Norm):
            scale_norm(self.producer, alpha)
        else:
            scale_output_channels(self.producer, alpha, 1 - input_axis(_unwrap(self.producer)), self.start)

    def reduce(self, values: Tensor) -> Tensor:
        """Per-consumer-channel maxima (e.g. ranges) reduced to α's channels by max."""
        if self.index is None:
            return values
        out = torch.zeros(self.channels, dtype=values.dtype, device=values.device)
        return out.scatter_reduce(0, self.index.to(values.device), values, "amax", include_self=False)


def _kv_index(arch: Architecture, config, channels: int) -> Tensor | None:
    """Consumer channel h·d + j (query head h) -> α channel (h // n_rep)·d + j, or None if 1:1."""
    heads = arch.heads(config)
    if heads.query == heads.kv:
        return None
    if heads.kv * heads.dim != channels or heads.query % heads.kv:
        raise ValueError(f"V has {channels} channels, expected {heads.kv} KV heads x {heads.dim}")
    rep = heads.query // heads.kv
    head = torch.arange(heads.query).repeat_interleave(heads.dim)
    return (head // rep) * heads.dim + torch.arange(heads.dim).repeat(heads.query)


def block_regions(model: nn.Module, names: Sequence[str]) -> dict[str, BlockRegion]:
    """Every named region in every block, keyed ``<block>.<region>`` (names validated first)."""
    arch = for_model(model)
    unknown = [n for n in names if n not in arch.regions]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"unknown or repeated scale region(s) {unknown or list(names)!r} for "
                         f"{arch.family}; known: {', '.join(arch.regions)}")
    out = {}
    for block_name, block in arch.block_list(model):
        for name in names:
            region = arch.regions[name]
            sites = list(region.consumers) + (
                [region.producer.site] if isinstance(region.producer, LinearOutput) else [])
            factored = [s for s in sites if isinstance(_unwrap(block.get_submodule(arch.block_sites[s])),
                                                       KroneckerLinear)]
            if factored:
                raise ValueError(f"scale region {name} of {block_name} folds into {', '.join(factored)}, which "
                                 "is Kronecker-factored: a channel scale folds only into a dense linear; use "
                                 "adapter=none (PTQ, QAT) on a decomposed model")
            start = 0
            if isinstance(region.producer, Norm):
                producer = block.get_submodule(region.producer.path)
                channels = producer.weight.numel()
            else:
                producer = block.get_submodule(arch.block_sites[region.producer.site])
                layer = _unwrap(producer)
                channels = layer.weight.shape[1 - input_axis(layer)]
                if region.producer.channels is not None:
                    start, stop = region.producer.channels(model.config)
                    channels = stop - start
            index = _kv_index(arch, model.config, channels) if region.repeat_kv else None
            consumers = [f"{block_name}.{arch.block_sites[c]}" for c in region.consumers]
            out[f"{block_name}.{name}"] = BlockRegion(f"{block_name}.{name}", region, block, producer,
                                                      start, channels, consumers, index)
    return out


def _consumers(sim: QuantSim, names: Sequence[str]) -> list[QuantizedLayer]:
    missing = [n for n in names if n not in sim.layers]
    if missing:
        raise ValueError(f"scale region consumer {missing[0]!r} is not a QuantizedLayer of this "
                         "QuantSim: quantize it (e.g. default sites) before attaching scales")
    return [sim.layers[n] for n in names]


def attach_scales(
    sim: QuantSim, model: nn.Module, names: Sequence[str],
    init: Tensor | Mapping[str, Tensor] | None = None,
) -> dict[str, ChannelScale]:
    """A ``ChannelScale`` for every named region of every block, keyed ``<block>.<region>``.

    ``init``: optional positive α on the producer's channels, one tensor for every scale or a
    tensor per key (e.g. SmoothQuant's); default α = 1.
    """
    regions = block_regions(model, names)
    for r in regions.values():  # validate all before changing anything
        _consumers(sim, r.consumers)
    if isinstance(init, Mapping) and set(init) != set(regions):
        raise ValueError(f"init has scales for {sorted(init)}, the regions are {sorted(regions)}")
    scales = {}
    for key, r in regions.items():
        layers = _consumers(sim, r.consumers)
        scales[key] = attach_scale(layers, [input_axis(layer.layer) for layer in layers], r.channels,
                                   init[key] if isinstance(init, Mapping) else init, r.index)
    return scales


def fold_scales(sim: QuantSim, model: nn.Module, scales: dict[str, ChannelScale]) -> None:
    """Fold every scale into its producer and consumers; the model's function is unchanged.

    Producers that cannot take α exactly (a linear whose weight quantizer is per-tensor or has
    learnable ranges) are refused before any scale is folded.
    """
    regions = block_regions(model, sorted({key.rpartition(".")[2] for key in scales}))
    for key, scale in scales.items():
        layers = _consumers(sim, regions[key].consumers)
        if any(layer.input_scale is not scale for layer in layers):
            raise ValueError(f"scale {key!r} is not the one attached to {', '.join(regions[key].consumers)}")
        if isinstance(regions[key].region.producer, LinearOutput):
            try:
                output_range(regions[key].producer)
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
    for key in scales:
        fold_scale(_consumers(sim, regions[key].consumers), regions[key].fold_producer)


@torch.no_grad()
def scale_region(region: BlockRegion, model: nn.Module, alpha: Tensor) -> None:
    """Reparameterize a plain (unquantized) model: producer ×α, consumers' input channels ÷α."""
    region.fold_producer(alpha)
    expanded = alpha if region.index is None else alpha[region.index]
    for name in region.consumers:
        layer = model.get_submodule(name)
        shape = [1] * layer.weight.dim()
        shape[input_axis(layer)] = -1
        layer.weight.copy_(layer.weight / expanded.view(shape))
