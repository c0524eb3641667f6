"""Corpora (embedded, local mirror, hub), cached tokenization, and training blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from quadapter.data.corpora import load_text
from quadapter.data.tokens import cached_encode


def token_ids(spec: Mapping[str, Any], split: str, tokenizer: PreTrainedTokenizerBase,
              data_dir: str | None, cache_dir: str | Path) -> torch.Tensor:
    """The token ids of one split of a dataset config, through the on-disk cache."""
    return cached_encode(load_text(spec, split, data_dir), tokenizer, cache_dir)


def eval_sets(cfg: DictConfig) -> dict[str, DictConfig]:
    """The held-out sets a run scores: the fine-tuning set's own first, then ``eval.sets``."""
    sets = {cfg.dataset.name: cfg.dataset}
    for spec in (cfg.eval.get("sets") or {}).values():
        sets.setdefault(spec.name, spec)
    return sets
