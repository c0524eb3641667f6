"""Tokenization with an on-disk cache keyed by the text and the tokenizer.

Tokenizing a corpus is the slowest step of a short evaluation run; every run of a sweep reuses the
same token ids. The key hashes the exact text and the tokenizer's full serialization, so editing
either gives a new entry rather than stale ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """What decides the ids: the serialized tokenizer without its truncation and padding state
    (a call with ``truncation=True`` sets those on the backend; they do not change the vocabulary)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        blob = json.dumps(spec, sort_keys=True)
    else:
        blob = repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def encode(text: str, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Token ids of ``text`` as one sequence (no special tokens, no length limit warnings)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        ids = backend.encode(text, add_special_tokens=False).ids
    else:
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def cached_encode(text: str, tokenizer: PreTrainedTokenizerBase, cache_dir: str | Path) -> torch.Tensor:
    """``encode`` with the result stored under ``cache_dir/tokens``."""
    key = hashlib.sha256(text.encode()).hexdigest()[:24] + "-" + tokenizer_fingerprint(tokenizer)
    path = Path(cache_dir) / "tokens" / f"{key}.npy"
    if path.is_file():
        try:
            return torch.from_numpy(np.load(path).astype(np.int64))
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # corrupt entry (e.g. killed mid-write elsewhere): rebuild
    ids = encode(text, tokenizer)
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.int32
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        np.save(f, ids.numpy().astype(dtype))
    os.replace(tmp, path)
    return ids
