"""Quantizer sites: config site names resolved, through the model's architecture adapter, to
QuantSim layer and output sites.

A family's sites (``models.arch``) are its block linears by name (input and weight of that layer
in every block), plus its head sites (input and weight: ``lm_head``; an encoder's ``pooler`` and
``classifier``), ``embeddings`` (the embedding output entering block 0) and ``residual`` (the
residual stream after every block). ``None`` means every block
linear. Layers may be HF ``Conv1D`` (GPT-2, weight [in, out]) or ``nn.Linear`` (weight [out, in]):
per-channel axes and the substitute-weight forward follow the layer's kind. A block linear
factored into Kronecker products (``KroneckerLinear``, KnGPT2) is two sites, its ``right`` and
``left`` factor linears, each quantized at its own input and weight: the two matmuls that run.

Not offered: attention scores/probabilities (computed inside HF's attention function, SDPA by
default, with no module boundary to hook) and the residual sum after attention (an inline add in
the block's forward); both would need a re-implemented attention or block forward.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from quadapter.models.arch import Architecture, for_model
from quadapter.models.kronecker import KroneckerLinear
from quadapter.quant.sim import LayerSite, OutputSite, linear_forward

Sites = tuple[list[LayerSite], list[OutputSite]]


def conv1d_forward(layer: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """HF ``Conv1D`` with a substitute weight: the same ``addmm`` as ``Conv1D.forward``."""
    out = torch.addmm(layer.bias, x.view(-1, x.size(-1)), weight)
    return out.view(*x.shape[:-1], weight.shape[1])


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, (Conv1D, nn.Linear))


def input_axis(layer: nn.Module) -> int:
    """Input-channel axis of a linear layer's weight: Conv1D is [in, out], nn.Linear [out, in]."""
    if isinstance(layer, Conv1D):
        return 0
    if isinstance(layer, nn.Linear):
        return 1
    raise TypeError(f"{type(layer).__name__} is not a Conv1D or nn.Linear layer")


def layer_site(name: str, module: nn.Module) -> LayerSite:
    """The layer site of a ``Conv1D`` or ``nn.Linear``: its output-channel axis and forward."""
    axis = input_axis(module)
    return LayerSite(name, weight_axis=1 - axis,
                     forward=conv1d_forward if isinstance(module, Conv1D) else linear_forward)


def _layer_sites(name: str, module: nn.Module) -> list[LayerSite]:
    """One site per dense linear; a Kronecker-factored one is its two factor linears."""
    if isinstance(module, KroneckerLinear):
        return [layer_site(f"{name}.{factor}", getattr(module, factor)) for factor in ("right", "left")]
    return [layer_site(name, module)]


def check_site_names(names: Sequence[str] | None, arch: Architecture) -> list[str]:
    """The names, validated against the family (``None``: every block linear)."""
    if names is None:
        return list(arch.block_sites)
    names = list(names)
    unknown = [n for n in names if n not in arch.sites]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"quantizer.sites={names!r} is invalid for model.arch={arch.family}: give a "
                         f"non-empty list of distinct sites from {', '.join(arch.sites)}, or null for "
                         "every block linear")
    return names


def quant_sites(model: nn.Module, names: Sequence[str] | None) -> Sites:
    """The QuantSim sites of ``model`` for the configured names; fails if a block holds a linear
    layer its family's site map does not know.

    That check is what keeps a layer from silently escaping quantization (cross-attention, a
    future block layout): every linear layer in a block is either a named site or an error.
    """
    arch = for_model(model)
    names = check_site_names(names, arch)
    known = set(arch.block_sites.values())
    layers: list[LayerSite] = []
    outputs: list[OutputSite] = []
    if "embeddings" in names:
        outputs.append(OutputSite(arch.embeddings_path(model)))
    for block_name, block in arch.block_list(model):
        factored = tuple(f"{n}." for n, m in block.named_modules() if isinstance(m, KroneckerLinear))
        unknown = [n for n, m in block.named_modules()
                   if is_linear(m) and n not in known and not n.startswith(factored)]
        if unknown:
            raise ValueError(f"{block_name} has linear layers the {arch.family} site map does not "
                             f"cover: {', '.join(unknown)}")
        for site, path in arch.block_sites.items():
            if site in names:
                layers += _layer_sites(f"{block_name}.{path}", block.get_submodule(path))
        if "residual" in names:
            outputs.append(OutputSite(block_name))
    for site, path in arch.head_sites.items():
        if site in names:
            try:
                head = model.get_submodule(path)
            except AttributeError:
                raise ValueError(f"site {site}: {type(model).__name__} has no {path}") from None
            layers.append(layer_site(path, head))
    return layers, outputs


def site_module_name(model: nn.Module, block_name: str, site: str) -> str:
    """The full module name of a block site: the block's name + the path the family's adapter
    declares for the site (``models/arch``)."""
    return f"{block_name}.{for_model(model).block_sites[site]}"
