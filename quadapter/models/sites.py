"""Quantizer sites per architecture: config site names resolved to QuantSim layer/output sites.

GPT-2 (HF ``GPT2LMHeadModel``/``GPT2Model``, also distilgpt2) names its sites relative to a block:
``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj`` (input and weight of that layer in
every block), plus ``lm_head`` (input and weight), ``embeddings`` (token + position embedding sum
entering block 0) and ``residual`` (the residual stream after every block). Layers may be HF
``Conv1D`` (weight [in, out]) or ``nn.Linear`` (weight [out, in]): per-channel axes follow.

Not offered: attention scores/probabilities (computed inside HF's attention function, SDPA by
default, with no module boundary to hook) and the residual sum after attention (an inline add in
``GPT2Block.forward``); both would need a re-implemented attention or block forward.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from transformers.models.gpt2.modeling_gpt2 import GPT2Block, GPT2Model
from transformers.pytorch_utils import Conv1D

from quadapter.quant.sim import LayerSite, OutputSite, linear_forward

GPT2_BLOCK_LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
GPT2_SITES = (*GPT2_BLOCK_LAYERS, "lm_head", "embeddings", "residual")
DEFAULT_SITES = GPT2_BLOCK_LAYERS

Sites = tuple[list[LayerSite], list[OutputSite]]


def conv1d_forward(layer: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """HF ``Conv1D`` with a substitute weight: the same ``addmm`` as ``Conv1D.forward``."""
    out = torch.addmm(layer.bias, x.view(-1, x.size(-1)), weight)
    return out.view(*x.shape[:-1], weight.shape[1])


def layer_site(name: str, module: nn.Module) -> LayerSite:
    """The layer site of a ``Conv1D`` or ``nn.Linear``: its output-channel axis and forward."""
    if isinstance(module, Conv1D):
        return LayerSite(name, weight_axis=1, forward=conv1d_forward)
    if isinstance(module, nn.Linear):
        return LayerSite(name, weight_axis=0, forward=linear_forward)
    raise TypeError(f"{name} is a {type(module).__name__}, not a Conv1D or nn.Linear layer")


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, (Conv1D, nn.Linear))


def check_site_names(names: Sequence[str], known: Sequence[str] = GPT2_SITES) -> list[str]:
    """The names, validated: a non-empty list of distinct known sites."""
    names = list(names)
    unknown = [n for n in names if n not in known]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"quantizer.sites={names!r} is invalid: give a non-empty list of distinct "
                         f"sites from {', '.join(known)}")
    return names


def gpt2_sites(model: nn.Module, names: Sequence[str]) -> Sites:
    """Resolve site names on a GPT-2; fails if a block holds a linear layer the map does not know.

    That check is what keeps a layer from silently escaping quantization (cross-attention, a
    future block layout): every linear layer in a block is either a named site or an error.
    """
    names = check_site_names(names)
    bodies = [(n, m) for n, m in model.named_modules() if isinstance(m, GPT2Model)]
    if len(bodies) != 1:
        raise ValueError(f"{type(model).__name__} holds {len(bodies)} GPT2Model bodies, not one")
    body_name, body = bodies[0]
    prefix = f"{body_name}." if body_name else ""
    layers: list[LayerSite] = []
    outputs: list[OutputSite] = []
    if "embeddings" in names:
        outputs.append(OutputSite(f"{prefix}drop"))
    for i, block in enumerate(body.h):
        if not isinstance(block, GPT2Block):
            raise TypeError(f"{prefix}h.{i} is a {type(block).__name__}, not a GPT2Block")
        unknown = [n for n, m in block.named_modules()
                   if is_linear(m) and n not in GPT2_BLOCK_LAYERS]
        if unknown:
            raise ValueError(f"{prefix}h.{i} has linear layers the GPT-2 site map does not cover: "
                             f"{', '.join(unknown)}")
        layers += [layer_site(f"{prefix}h.{i}.{rel}", block.get_submodule(rel))
                   for rel in GPT2_BLOCK_LAYERS if rel in names]
        if "residual" in names:
            outputs.append(OutputSite(f"{prefix}h.{i}"))
    if "lm_head" in names:
        head = getattr(model, "lm_head", None)
        if head is None:
            raise ValueError(f"site lm_head: {type(model).__name__} has no lm_head")
        layers.append(layer_site("lm_head", head))
    return layers, outputs


SITE_MAPS: dict[str, Callable[[nn.Module, Sequence[str]], Sites]] = {"gpt2": gpt2_sites}


def quant_sites(model: nn.Module, names: Sequence[str]) -> Sites:
    """The QuantSim sites of ``model`` (by ``config.model_type``) for the configured names."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SITE_MAPS:
        raise ValueError(f"no quantizer site map for model type {model_type!r}; "
                         f"available: {', '.join(SITE_MAPS)}")
    return SITE_MAPS[model_type](model, names)
