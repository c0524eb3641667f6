"""The one way to load a causal LM and its tokenizer: hub name or local directory."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2TokenizerFast, PreTrainedModel
from transformers import PreTrainedTokenizerBase

from quadapter.errors import UserError


class ModelError(UserError):
    """A model or tokenizer that cannot be loaded, with a message that says how to fix it."""


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """AutoTokenizer, or GPT-2's BPE from a bare ``vocab.json`` + ``merges.txt`` directory.

    A bare directory has no config naming its class; ``GPT2TokenizerFast(vocab_file=...)`` would
    silently build a 1-token tokenizer with transformers 5, ``from_pretrained(dir)`` is exact.
    """
    path = Path(name_or_path).expanduser()
    bare_bpe = (path.is_dir() and (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
                and not (path / "tokenizer_config.json").is_file())
    try:
        if bare_bpe:
            return GPT2TokenizerFast.from_pretrained(str(path))
        return AutoTokenizer.from_pretrained(str(path) if path.exists() else name_or_path)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load tokenizer {name_or_path!r}: {e}. Give a hub name (needs the "
                         "hub) or a local directory (model.tokenizer=...)") from e


def load_model(name_or_path: str, tokenizer: str | None = None, dtype: str = "float32",
               trust_remote_code: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model in eval mode on the CPU, and its tokenizer (``tokenizer`` defaults to the model's)."""
    path = Path(name_or_path).expanduser()
    source = str(path) if path.exists() else name_or_path
    if path.is_dir() and not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelError(f"model directory {path} holds no weights (*.safetensors or *.bin); "
                         "save one with model.save_pretrained(dir)")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load model {name_or_path!r}: {e}. Give a hub name (needs the hub) "
                         "or a local directory saved with save_pretrained") from e
    tok = load_tokenizer(tokenizer or source)
    vocab = model.get_input_embeddings().num_embeddings
    if len(tok) > vocab:
        raise ModelError(f"tokenizer {tokenizer or source!r} has {len(tok)} tokens but model "
                         f"{name_or_path!r} embeds only {vocab}: they do not belong together; "
                         "set model.tokenizer to the model's own tokenizer")
    return model.eval(), tok
