"""Controlled outlier profile: give a small model GPT-2-like activation-outlier channels.

A model pretrained for minutes on a CPU has no outlier channels (DESIGN §5), so the problem
Quadapter and SmoothQuant address cannot show. ``apply_outlier_profile`` emulates it with a
function-preserving reparameterization: for ``channels`` hidden channels (drawn once by ``seed``,
the same channels in every block, as GPT-2's outliers sit in a few fixed dimensions) it multiplies
the output of every block's norm-produced scale region (the family's ``Norm`` regions: GPT-2's
``ln_1``/``ln_2``, Llama's two RMSNorms) by ``factor`` and divides the matching input channels of
their consumers by ``factor``. The FP model computes the same function (to float rounding), while
the quantized activations at the consumers' inputs now have a few channels ``factor`` times larger
than the rest. Runs using it are a controlled setting, labelled so in results (``model`` gets a
``+outliers`` suffix).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from quadapter.models.arch import Norm, for_model
from quadapter.models.regions import block_regions, scale_region


def check_outlier_profile(profile: Mapping[str, Any], n_embd: int) -> tuple[int, float, int]:
    """(channels, factor, seed), validated; ValueError naming the key, value and what is allowed."""
    unknown = set(profile) - {"channels", "factor", "seed"}
    if unknown:
        raise ValueError(f"model.outlier_profile has unknown keys {sorted(unknown)}; allowed: "
                         "channels, factor, seed")
    channels, factor, seed = profile.get("channels", 4), profile.get("factor", 30.0), profile.get("seed", 0)
    if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= n_embd:
        raise ValueError(f"model.outlier_profile.channels={channels!r} is invalid: give an integer in "
                         f"[1, {n_embd}] (the hidden size)")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
        raise ValueError(f"model.outlier_profile.factor={factor!r} is invalid: give a number > 0")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"model.outlier_profile.seed={seed!r} is invalid: give an integer")
    return channels, float(factor), seed


def outlier_channels(n_embd: int, channels: int, seed: int) -> list[int]:
    """The ``channels`` hidden channels that get the outliers, sorted, drawn by ``seed``."""
    order = torch.randperm(n_embd, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:channels].tolist())


@torch.no_grad()
def apply_outlier_profile(model: nn.Module, profile: Mapping[str, Any]) -> dict[str, Any]:
    """Reparameterize ``model`` (a causal LM) in place; returns the record for results.json."""
    arch = for_model(model)
    names = [n for n, r in arch.regions.items() if isinstance(r.producer, Norm)]
    if not names:
        raise ValueError(f"model.outliers needs a norm-produced scale region, and the {arch.family} "
                         f"family has none ({arch.regions_note or 'no foldable norm'}): drop "
                         "model.outliers for this model")
    regions = block_regions(model, names)
    hidden = next(iter(regions.values())).channels
    channels, factor, seed = check_outlier_profile(profile, hidden)
    idx = outlier_channels(hidden, channels, seed)
    for region in regions.values():
        alpha = torch.ones(region.channels, device=region.producer.weight.device)
        alpha[idx] = factor
        scale_region(region, model, alpha)
    return {"controlled": True, "channels": channels, "factor": factor, "seed": seed,
            "channel_ids": idx, "sites": [arch.regions[n].doc.replace(" ", "") for n in names],
            "blocks": len(arch.block_list(model))}
