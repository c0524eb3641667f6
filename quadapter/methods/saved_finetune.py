"""A saved FP fine-tuning: what a ``method=fp task=glue`` run keeps with ``task.finetune.save=true``.

Two things read it: distillation (``distill.teacher``: the teacher) and the methods that start from
the FP fine-tuned model (``task.finetune.load``: ptq and progressive start from it instead of
fine-tuning again, so a sweep fine-tunes once per seed, not once per row). Both need the same
guarantee: a completed FP run of this GLUE task whose model and tokenizer were saved.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from quadapter.data.tokens import tokenizer_fingerprint
from quadapter.errors import ConfigError
from quadapter.schema.groups import loads_finetuning

SAVE_DIR = "finetuned"  # where method=fp saves the fine-tuned model inside its run dir


def starts_from_saved(cfg: DictConfig) -> bool:
    """Whether this run copies ``task.finetune.load`` instead of fine-tuning (fp ignores it)."""
    finetune = cfg.task.get("finetune")
    return bool(finetune is not None and finetune.get("load")
                and loads_finetuning(cfg.method.name, cfg.method.get("start")))


def saved_fp_run(cfg: DictConfig, key: str) -> tuple[Path, dict[str, Any]]:
    """The run dir named by config ``key`` and its results.json, checked to be a completed FP run of
    this GLUE task (same dataset) with its fine-tuned model saved."""
    given = OmegaConf.select(cfg, key)
    fix = ("run method=fp task=glue with task.finetune.save=true on the same dataset and pass its "
           f"run dir as {key}")
    if not given:
        raise ConfigError(f"config error: {key} is not set: {fix}")
    run_dir = Path(given).expanduser()
    results_file = run_dir / "results.json"
    if not results_file.is_file():
        raise ConfigError(f"config error: {key}={given} is not a run dir (no results.json): {fix}")
    try:
        results = json.loads(results_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"config error: {key}={given}: unreadable results.json ({e}): {fix}") from e
    what = {k: results.get(k) for k in ("status", "method", "task", "dataset")}
    wanted = {"status": "completed", "method": "fp", "task": "glue", "dataset": cfg.dataset.name}
    wrong = [f"{k} {what[k]!r} (needs {v!r})" for k, v in wanted.items() if what[k] != v]
    if wrong:
        raise ConfigError(f"config error: {key}={given} is not a saved FP fine-tuning of this task: "
                          f"{', '.join(wrong)}; {fix}")
    if not (run_dir / SAVE_DIR / "config.json").is_file():
        raise ConfigError(f"config error: {key}={given} saved no model ({run_dir / SAVE_DIR} is "
                          f"missing): {fix}")
    return run_dir, results


@functools.lru_cache(maxsize=1)
def _read(path: str, device: str, saved_at: int) -> tuple[nn.Module, str]:
    """The saved model (frozen, eval mode) and its tokenizer's fingerprint, read once per run (a
    progressive run's stages all distil from it; ``saved_at``: a re-saved model is re-read)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer_fingerprint(AutoTokenizer.from_pretrained(path))


def load_saved(cfg: DictConfig, key: str, tokenizer, device: torch.device
               ) -> tuple[nn.Module, Path, dict[str, Any]]:
    """The saved fine-tuned model of the run named by ``key`` (frozen, eval mode; shared: copy its
    weights, never train it), checked to read this run's token ids; its run dir and results."""
    run_dir, results = saved_fp_run(cfg, key)
    path = (run_dir / SAVE_DIR).resolve()
    model, theirs = _read(str(path), str(device), (path / "config.json").stat().st_mtime_ns)
    if theirs != tokenizer_fingerprint(tokenizer):
        raise ConfigError(f"config error: {key}={OmegaConf.select(cfg, key)} uses another tokenizer than this "
                          f"run's model ({cfg.model.name}): both must read the same token ids; "
                          "fine-tune it from the same model")
    return model, run_dir, results
