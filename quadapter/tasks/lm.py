"""Language modelling (``task=lm``): token streams, perplexity, blocks of the model's context.

Held-out sets are the fine-tuning dataset's test split and ``eval.sets`` (``data.eval_sets``), each
scored with the one strided-window perplexity (``quadapter.evaluation``) and its protocol recorded.
Calibration and training cut the fine-tuning split into blocks of ``eval.context`` tokens (null: the
model's maximum context). The curves show the running train perplexity and the held-out
perplexities on ``eval.val_split`` (the test split where a set has none).
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Subset

from quadapter.data import eval_sets, token_ids
from quadapter.data.corpora import DataError, MissingSplitError
from quadapter.data.datamodule import LMDataModule, TokenBlocks
from quadapter.errors import ConfigError
from quadapter.evaluation import perplexity
from quadapter.models.loading import eval_window
from quadapter.tasks.base import Task, device_of

log = logging.getLogger(__name__)
BLOCKS_FIX = ("cuts it into blocks of eval.context tokens (null: the model's maximum context); lower "
              "eval.context, or use a larger split or dataset")


class LanguageModelling(Task):
    name = "lm"
    head = "causal_lm"
    direction = "minimize"

    def __init__(self, cfg: DictConfig, model: nn.Module, tokenizer, data_dir: str | None,
                 cache_dir: Path):
        super().__init__(cfg, model, tokenizer, data_dir, cache_dir)
        self.context, self.stride = eval_window(model, cfg.eval.context, cfg.eval.stride)
        if cfg.eval.max_tokens is not None and cfg.eval.max_tokens < 2:
            raise ConfigError(f"eval.max_tokens={cfg.eval.max_tokens} scores nothing: set it to null "
                              "(every token) or at least 2")
        self.sets = eval_sets(cfg)
        # every held-out split is read now, so a missing or empty one fails before the method runs
        self.test_ids = {name: self._ids(spec, cfg.eval.split) for name, spec in self.sets.items()}
        self.curve_ids: dict[str, torch.Tensor] = {}

    @staticmethod
    def primary_metric(cfg: DictConfig) -> str:
        return "ppl"

    def _ids(self, spec: Mapping[str, Any], split: str) -> torch.Tensor:
        return token_ids(spec, split, self.tokenizer, self.data_dir, self.cache_dir)

    def evaluate(self, model: nn.Module) -> Iterator[tuple[str, dict[str, float], dict[str, Any]]]:
        cfg = self.cfg
        for name, spec in self.sets.items():
            ids = self.test_ids[name]
            total = len(ids)
            if cfg.eval.max_tokens:
                ids = ids[:cfg.eval.max_tokens]
            ppl, scored = perplexity(model, ids, self.context, self.stride, cfg.eval.batch_size)
            yield name, {"ppl": ppl}, {
                "dataset": name, "variant": spec.variant, "split": cfg.eval.split,
                "joiner": spec.joiner, "context": self.context, "stride": self.stride, "level": "token",
                "tokenizer": self.tokenizer.name_or_path, "tokens": len(ids), "tokens_in_split": total,
                "scored_tokens": scored}

    def calibration(self, split: str, count: int, batch_size: int,
                    seed: int) -> tuple[Iterable, dict[str, Any]]:
        """Seeded random blocks of ``eval.context`` tokens."""
        name = self.cfg.dataset.name
        blocks = TokenBlocks(self._ids(self.cfg.dataset, split), self.context,
                             f"dataset {name!r}, split {split!r}",
                             f"calibration {BLOCKS_FIX} (quantizer.calibration.split)")
        n = min(count, len(blocks))
        if n < count:
            log.warning("calibration: %s/%s holds only %d blocks of %d tokens, not %d", name, split,
                        n, self.context, count)
        order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))
        info = {"dataset": name, "split": split, "blocks": n, "block_size": self.context,
                "tokens": n * self.context}
        return DataLoader(Subset(blocks, order[:n].tolist()), batch_size=batch_size), info

    def forward(self, model: nn.Module, batch: torch.Tensor) -> Any:
        return model(batch.to(device_of(model)))

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return model(batch, labels=batch).loss

    @staticmethod
    def model_inputs(batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        return {"input_ids": batch}, batch, torch.ones_like(batch)  # every token of a block counts

    def train_data(self, train_cfg: Mapping[str, Any], seed: int,
                   context: str) -> tuple[pl.LightningDataModule, dict[str, Any]]:
        """Random blocks of the fine-tuning split (its first ``train_tokens`` tokens if set)."""
        cfg = self.cfg
        train = self._ids(cfg.dataset, "train")
        limit = train_cfg.get("train_tokens")
        if limit:
            train = train[:limit]
        source = f"dataset {cfg.dataset.name!r}, split 'train'" + (
            f" (its first {context}.train_tokens={limit})" if limit else "")
        return self.training_blocks({source: train}, train_cfg, seed), {"train_tokens": len(train)}

    def training_blocks(self, corpora: Mapping[str, torch.Tensor], train_cfg: Mapping[str, Any],
                        seed: int) -> LMDataModule:
        """Random blocks of ``eval.context`` tokens, equal weight per corpus (named by its key),
        ``steps × batch_size`` of them: the task's own data, or a method's (kd_pretrain's slice)."""
        return LMDataModule(list(corpora.values()), block_size=self.context, batch_size=train_cfg["batch_size"],
                            num_samples=train_cfg["steps"] * train_cfg["batch_size"], seed=seed,
                            sources=list(corpora), fix=f"training {BLOCKS_FIX}")

    def curve_sets(self) -> dict[str, str]:
        """Token ids of every held-out set's curve split (``eval.val_split``, else its test split).

        Local mirrors may lack a validation split (WikiText-2 raw, LAMBADA); then the curve uses the
        test split and the summary says so, rather than the run failing.
        """
        cfg, used = self.cfg, {}
        for name, spec in self.sets.items():
            missing = None
            for split in dict.fromkeys([cfg.eval.val_split, cfg.eval.split]):
                try:
                    ids = self._ids(spec, split)
                except MissingSplitError as e:  # any other DataError is a broken input: it surfaces
                    missing = e
                    continue
                self.curve_ids[name], used[name] = ids[: cfg.eval.val_max_tokens or None], split
                break
            else:
                raise DataError(f"held-out set {name!r} has neither a {cfg.eval.val_split!r} nor a "
                                f"{cfg.eval.split!r} split to draw its curve from: {missing}")
            if used[name] != cfg.eval.val_split:
                log.warning("held-out set %s has no %s split: its curve uses %s", name,
                            cfg.eval.val_split, used[name])
        return used

    def curve_point(self, model: nn.Module, mean_train_loss: float | None) -> dict[str, float]:
        row = {}
        if mean_train_loss is not None:  # a diverging loss overflows exp: inf, refused by the caller
            row["train/ppl"] = (math.exp(mean_train_loss) if mean_train_loss < math.log(sys.float_info.max)
                                else math.inf)
        for name, ids in self.curve_ids.items():
            row[f"val/{name}/ppl"] = perplexity(model, ids, self.context, self.stride,
                                                self.cfg.eval.batch_size)[0]
        return row

    @staticmethod
    def format_results(results: Mapping[str, Any]) -> list[str]:
        lines = [f"{'set':<14}{'ppl':>12}{'scored':>10}{'context':>9}{'stride':>8}"]
        for name, proto in results["protocol"].items():
            ppl = results["metrics"][f"test/{name}/ppl"]
            lines.append(f"{name:<14}{ppl:>12.3f}{proto['scored_tokens']:>10}{proto['context']:>9}"
                         f"{proto['stride']:>8}")
        return lines
