"""Corpora (embedded, local mirror, hub), cached tokenization, and training blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from quadapter.data.corpora import DataError, describe_source, load_text
from quadapter.data.tokens import cached_encode

# Perplexity scores a token from the tokens before it: one token of context and one to score.
MIN_TOKENS = 2


def token_ids(spec: Mapping[str, Any], split: str, tokenizer: PreTrainedTokenizerBase,
              data_dir: str | None, cache_dir: str | Path) -> torch.Tensor:
    """The token ids of one split of a dataset config, through the on-disk cache.

    Raises ``DataError`` when the split tokenizes to fewer than ``MIN_TOKENS`` tokens: nothing
    could be scored or trained on. Shorter than one evaluation window is fine (one partial window
    scores every token but the first); training and calibration blocks check their own length.
    """
    ids = cached_encode(load_text(spec, split, data_dir), tokenizer, cache_dir)
    if len(ids) < MIN_TOKENS:
        raise DataError(
            f"dataset {spec['name']!r}, split {split!r} ({describe_source(spec, split, data_dir)}) "
            f"tokenizes to only {len(ids)} token(s); perplexity needs at least {MIN_TOKENS} (one of "
            "context, one to score). Use a larger split or dataset")
    return ids


def eval_sets(cfg: DictConfig) -> dict[str, DictConfig]:
    """The held-out sets a run scores: the fine-tuning set's own first, then ``eval.sets``."""
    sets = {cfg.dataset.name: cfg.dataset}
    for spec in (cfg.eval.get("sets") or {}).values():
        sets.setdefault(spec.name, spec)
    return sets
