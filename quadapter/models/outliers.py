"""Controlled outlier profile: give a small model GPT-2-like activation-outlier channels.

A model pretrained for minutes on a CPU has no outlier channels (DESIGN §5), so the problem
Quadapter and SmoothQuant address cannot show. ``apply_outlier_profile`` emulates it with a
function-preserving reparameterization: for ``channels`` hidden channels (drawn once by ``seed``,
the same channels in every block, as GPT-2's outliers sit in a few fixed dimensions) it multiplies
γ and β of every block's ``ln_1`` and ``ln_2`` by ``factor`` and divides the matching input rows
of their only consumers (``attn.c_attn`` and ``mlp.c_fc``) by ``factor``. The FP model computes
the same function (to float rounding), while the quantized activations at the inputs of those
layers now have a few channels ``factor`` times larger than the rest. Runs using it are a
controlled setting, labelled so in results (``model`` gets a ``+outliers`` suffix).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

PAIRS = (("ln_1", "attn.c_attn"), ("ln_2", "mlp.c_fc"))  # (LayerNorm, its only consumer)


def _input_axis(layer: nn.Module) -> int:
    if isinstance(layer, Conv1D):
        return 0  # HF Conv1D weight is [in, out]
    if isinstance(layer, nn.Linear):
        return 1  # nn.Linear weight is [out, in]
    raise TypeError(f"{type(layer).__name__} is not a Conv1D or nn.Linear layer")


def check_outlier_profile(profile: Mapping[str, Any], n_embd: int) -> tuple[int, float, int]:
    """(channels, factor, seed), validated; ValueError naming the key, value and what is allowed."""
    unknown = set(profile) - {"channels", "factor", "seed"}
    if unknown:
        raise ValueError(f"model.outlier_profile has unknown keys {sorted(unknown)}; allowed: "
                         "channels, factor, seed")
    channels, factor, seed = profile.get("channels", 4), profile.get("factor", 30.0), profile.get("seed", 0)
    if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= n_embd:
        raise ValueError(f"model.outlier_profile.channels={channels!r} is invalid: give an integer in "
                         f"[1, {n_embd}] (n_embd)")
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
    """Reparameterize ``model`` (a GPT-2 LM) in place; returns the record for results.json."""
    body = getattr(model, "transformer", model)
    n_embd = body.config.n_embd if hasattr(body, "config") else model.config.n_embd
    channels, factor, seed = check_outlier_profile(profile, n_embd)
    idx = torch.tensor(outlier_channels(n_embd, channels, seed))
    for block in body.h:
        for ln_name, consumer_name in PAIRS:
            ln, layer = block.get_submodule(ln_name), block.get_submodule(consumer_name)
            ln.weight[idx] *= factor
            ln.bias[idx] *= factor
            rows = layer.weight.index_select(_input_axis(layer), idx.to(layer.weight.device))
            layer.weight.index_copy_(_input_axis(layer), idx.to(layer.weight.device), rows / factor)
    return {"controlled": True, "channels": channels, "factor": factor, "seed": seed,
            "channel_ids": idx.tolist(), "sites": [f"{a}->{b}" for a, b in PAIRS],
            "blocks": len(body.h)}
