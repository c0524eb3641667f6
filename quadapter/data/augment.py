"""Training-set augmentation for GLUE: a config-selected augmenter applied to each training batch.

``token_mask`` replaces each ordinary token of an example (not [CLS], [SEP] or padding) by the
tokenizer's mask token with probability ``prob`` — a cheap, real augmenter in the spirit of
masked-LM noise. It is NOT the paper's: the two-stage progressive paper (like TinyBERT) augments
with word replacements proposed by a pretrained masked LM and GloVe neighbours, which needs
resources not available offline. The masks depend only on the run's seed and the batch's example
indices, so a resumed run sees exactly the batches an unbroken one does.
"""

from __future__ import annotations

import zlib

import torch

AUGMENTERS = ("none", "token_mask")


class TokenMasking:
    """``inputs["input_ids"]`` with ordinary tokens replaced by ``mask_id`` at rate ``prob``."""

    def __init__(self, prob: float, mask_id: int, special_ids: list[int], seed: int) -> None:
        if not 0 <= prob <= 1:
            raise ValueError(f"token_mask prob must be in [0, 1], got {prob!r}")
        self.prob, self.mask_id, self.seed = prob, mask_id, seed
        self.special = torch.tensor(sorted(set(special_ids)), dtype=torch.long)

    def __call__(self, inputs: dict[str, torch.Tensor], idx: list[int]) -> dict[str, torch.Tensor]:
        ids = inputs["input_ids"]
        key = zlib.crc32(torch.tensor([self.seed, *idx], dtype=torch.int64).numpy().tobytes())
        draw = torch.rand(ids.shape, generator=torch.Generator().manual_seed(key))
        ordinary = ~torch.isin(ids, self.special)
        if "attention_mask" in inputs:
            ordinary &= inputs["attention_mask"].bool()
        return {**inputs, "input_ids": torch.where(ordinary & (draw < self.prob), self.mask_id, ids)}


def make_augmenter(spec, tokenizer, seed: int) -> TokenMasking | None:
    """The augmenter ``task.augment`` names (None for ``none``)."""
    if spec is None or spec.name == "none":
        return None
    if spec.name != "token_mask":
        raise ValueError(f"unknown augmenter {spec.name!r}; valid: {', '.join(AUGMENTERS)}")
    mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
    return TokenMasking(spec.prob, mask_id, tokenizer.all_special_ids, seed)
