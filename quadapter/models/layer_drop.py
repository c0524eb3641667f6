"""A shallower student made of some of a model's own blocks (DistilBERT / DistilGPT2 initialization:
every other block of the teacher), through the architecture adapter.

The kept blocks keep their pretrained weights and their order; embeddings, final norm and head are
kept whole. The result is an ordinary model of its family with fewer layers (``config`` updated),
so ``save_pretrained`` and the loader handle it as any other checkpoint.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from quadapter.models.arch import for_model


def every_other(n_blocks: int) -> list[int]:
    """Blocks 0, 2, 4, …: DistilGPT2's choice (half the depth, the first block kept)."""
    return list(range(0, n_blocks, 2))


def keep_blocks(model: nn.Module, keep: Sequence[int]) -> dict[str, Any]:
    """Keep only the blocks ``keep`` (indices, in order) of ``model``, in place; returns what was kept
    and the parameter counts before and after."""
    arch = for_model(model)
    base = model.base_model
    blocks = base.get_submodule(arch.blocks)
    n = len(blocks)
    keep = [int(i) for i in keep]
    if not keep or keep != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= n:
        raise ValueError(f"blocks to keep must be distinct increasing indices in 0..{n - 1}, got {keep}")
    before = sum(p.numel() for p in model.parameters())  # tied weights once
    kept = nn.ModuleList([blocks[i] for i in keep])
    parent_name, _, attr = arch.blocks.rpartition(".")
    setattr(base.get_submodule(parent_name) if parent_name else base, attr, kept)
    for new_index, block in enumerate(kept):  # KV-cache slots follow the new positions
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    model.config.num_hidden_layers = len(keep)
    layer_types = getattr(model.config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == n:
        model.config.layer_types = [layer_types[i] for i in keep]
    after = sum(p.numel() for p in model.parameters())  # tied weights once
    return {"kept_blocks": keep, "blocks_before": n, "params_before": before, "params_after": after}
