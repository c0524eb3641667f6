"""The embedded default model: a small GPT-2 pretrained by the framework on the embedded corpora.

It is a real GPT-2 (``models.arch.gpt2``) with its own byte-level BPE, so every GPT-2 code path applies to it,
and it needs no download. It is trained once per (config, Python version) — the corpora are the
installed standard library — cached under the cache dir, and reused by every later run. Training
checkpoints as it goes, so an interrupted pretraining resumes where it stopped.

``spec["domains"]`` names what it learns, with equal weight: an embedded domain (``prose``,
``code``) or a key of ``spec["corpora"]``, a dataset config (``conf/dataset/*.yaml``) plus the
``split`` pretrained on, read from ``spec["data_dir"]`` (a local mirror) or the hub. Such a model
(``model=proxy``) is keyed by the sha256 of each real corpus's text instead of the data dir's path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import pytorch_lightning as pl
from filelock import FileLock
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast

from quadapter.checkpoints import check_checkpoint
from quadapter.data.corpora import load_rows
from quadapter.data.datamodule import LMDataModule
from quadapter.data.embedded import DOMAINS, embedded_documents
from quadapter.data.tokens import cached_encode
from quadapter.errors import ConfigError
from quadapter.methods.train_module import TrainModule, weight_groups
from quadapter.methods.training import RandomState
from quadapter.models.arch import gpt2

log = logging.getLogger(__name__)
EOS = "<|endoftext|>"
JOINER = "\n\n"  # the embedded dataset configs' joiner, so token caches are shared with evaluation


def check_domains(spec: Mapping[str, Any]) -> None:
    """Every domain is an embedded one or a key of ``corpora``; ConfigError naming the fix if not."""
    corpora = spec.get("corpora") or {}
    for domain in spec["domains"]:
        if domain not in corpora and domain not in DOMAINS:
            raise ConfigError(
                f"model.pretrain.domains has {domain!r}, which is neither an embedded domain "
                f"({', '.join(DOMAINS)}) nor a key of model.pretrain.corpora "
                f"({', '.join(corpora) or 'none'}); add it to corpora or remove it")


def domain_documents(spec: Mapping[str, Any], domain: str) -> list[str]:
    """One pretraining domain's documents: the embedded train split, or a real corpus's rows."""
    corpora = spec.get("corpora") or {}
    if domain in corpora:
        corpus = corpora[domain]
        return load_rows(corpus, corpus["split"], spec.get("data_dir"))
    return embedded_documents(domain, "train")


def domain_text(spec: Mapping[str, Any], domain: str) -> str:
    """One pretraining domain as the one string that is tokenized (its documents joined)."""
    corpora = spec.get("corpora") or {}
    joiner = corpora[domain]["joiner"] if domain in corpora else JOINER
    return joiner.join(domain_documents(spec, domain))


def _cache_key(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Every pretraining knob; for real corpora the hash of their text, not where the data dir is.

    A spec without real corpora (``model=tiny``) hashes exactly as it always has, so its cached
    model stays valid.
    """
    key = {"spec": dict(spec), "python": platform.python_version()}
    used = [d for d in spec["domains"] if d in (spec.get("corpora") or {})]
    if "corpora" in spec or "data_dir" in spec:
        key["spec"].pop("data_dir", None)
        key["data"] = {d: hashlib.sha256(domain_text(spec, d).encode()).hexdigest() for d in used}
    return key


def embedded_model_dir(spec: Mapping[str, Any], cache_dir: str | Path) -> Path:
    """Where the model for ``spec`` lives: keyed by every pretraining knob and the Python version."""
    check_domains(spec)
    blob = json.dumps(_cache_key(spec), sort_keys=True)
    return Path(cache_dir) / "models" / f"embedded-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def ensure_embedded_model(spec: Mapping[str, Any], cache_dir: str | Path) -> Path:
    """The directory of the pretrained embedded model, pretraining it first if it is not cached."""
    final = embedded_model_dir(spec, cache_dir)
    if (final / "pretrain.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):  # parallel sweep jobs wait for one pretraining
        if not (final / "pretrain.json").is_file():
            _pretrain(dict(spec), final, cache_dir)
    return final


def _train_tokenizer(spec: dict, out: Path) -> PreTrainedTokenizerFast:
    if (out / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(out))
    texts = []
    for domain in spec["domains"]:
        budget = spec["tokenizer_chars"]
        for doc in domain_documents(spec, domain):
            texts.append(doc[:budget])
            budget -= len(texts[-1])
            if budget <= 0:
                break
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=spec["vocab_size"], min_frequency=2,
                            special_tokens=[EOS], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS,
                                  unk_token=EOS, model_max_length=spec["block_size"])
    tok.save_pretrained(str(out))
    return tok


def _pretrain(spec: dict, final: Path, cache_dir: str | Path) -> None:
    work = final.with_name(final.name + ".partial")
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    log.info("pretraining the embedded model into %s (once; later runs reuse it)", final)
    tok = _train_tokenizer(spec, work / "tokenizer")
    train = [cached_encode(domain_text(spec, d), tok, cache_dir) for d in spec["domains"]]
    pl.seed_everything(spec["seed"], workers=True, verbose=False)
    model = gpt2.new_model(vocab_size=len(tok), n_positions=spec["block_size"], n_embd=spec["n_embd"],
                           n_layer=spec["n_layer"], n_head=spec["n_head"],
                           bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    module = TrainModule(model, weight_groups(model, spec["lr"], spec["weight_decay"]),
                            total_steps=spec["steps"], warmup_steps=spec["warmup_steps"])
    data = LMDataModule(train, spec["block_size"], spec["batch_size"],
                        num_samples=spec["steps"] * spec["batch_size"], seed=spec["seed"],
                        sources=[f"pretraining domain {d!r}" for d in spec["domains"]],
                        fix="lower model.pretrain.block_size or pretrain on a larger corpus")
    ckpt = ModelCheckpoint(dirpath=work / "checkpoints", save_last=True,
                           every_n_train_steps=spec.get("checkpoint_every", 50))
    trainer = pl.Trainer(max_steps=spec["steps"], accelerator="auto", devices=1,
                         callbacks=[ckpt, RandomState(), TQDMProgressBar(refresh_rate=10)],
                         logger=CSVLogger(work, name="logs"), enable_model_summary=False,
                         gradient_clip_val=1.0, log_every_n_steps=10)
    last = work / "checkpoints" / "last.ckpt"
    if last.is_file():
        check_checkpoint(last)
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.is_file() else None)
    staging = final.with_name(final.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    module.model.save_pretrained(str(staging))
    tok.save_pretrained(str(staging))
    loss = trainer.callback_metrics.get("train/loss")
    meta = {"spec": spec, "python": platform.python_version(), "parameters":
            sum(p.numel() for p in module.model.parameters()), "train_tokens":
            spec["steps"] * spec["batch_size"] * spec["block_size"], "final_train_loss":
            float(loss) if loss is not None else None, "seconds": round(time.time() - start, 1),
            "domain_tokens": {d: len(ids) for d, ids in zip(spec["domains"], train, strict=True)}}
    if "data" in (key := _cache_key(spec)):
        meta["data_sha256"] = key["data"]
    (staging / "pretrain.json").write_text(json.dumps(meta, indent=2))
    staging.rename(final)
    shutil.rmtree(work, ignore_errors=True)
    log.info("embedded model ready: %s", json.dumps(meta))
