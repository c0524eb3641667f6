"""Fixed-length training blocks and the LightningDataModule that serves them."""

from __future__ import annotations

from typing import Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, WeightedRandomSampler

from quadapter.data.corpora import DataError


class TooShortError(DataError, ValueError):
    """Fewer tokens than one training or calibration block."""


class TokenBlocks(Dataset):
    """Non-overlapping windows of ``block_size`` tokens cut from one token sequence.

    ``source`` names the sequence and ``fix`` what to change when it is shorter than one block,
    e.g. ``"dataset 'ptb', split 'train'"`` and ``"lower eval.context or use a larger split"``.
    """

    def __init__(self, ids: torch.Tensor, block_size: int, source: str = "the token sequence",
                 fix: str = "use a larger split or a shorter block"):
        if len(ids) < block_size:
            raise TooShortError(f"{source} has {len(ids)} tokens, shorter than one block of "
                                f"{block_size} tokens: {fix}")
        self.ids, self.block_size = ids, block_size

    def __len__(self) -> int:
        return len(self.ids) // self.block_size

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.ids[i * self.block_size:(i + 1) * self.block_size]


class LMDataModule(pl.LightningDataModule):
    """Random training blocks drawn with equal weight from each corpus, however large each one is.

    Sampling with replacement for a fixed number of samples decouples the training length from the
    corpus sizes, so a small fine-tuning set and a large one train for the same number of steps.
    ``sources`` names each corpus and ``fix`` the remedy, for the error when one is too short.
    """

    def __init__(self, train: Sequence[torch.Tensor], block_size: int, batch_size: int,
                 num_samples: int, seed: int = 0, sources: Sequence[str] | None = None,
                 fix: str = "use a larger split or a shorter block"):
        super().__init__()
        sources = sources or [f"training corpus {i}" for i in range(len(train))]
        self.parts = [TokenBlocks(ids, block_size, src, fix)
                      for ids, src in zip(train, sources, strict=True)]
        self.batch_size, self.num_samples, self.seed = batch_size, num_samples, seed

    def train_dataloader(self) -> DataLoader:
        """The seeded sample order; a run resumed at step k skips the k batches it already trained on.

        Lightning restores ``global_step`` from the checkpoint before it asks for the loader, so an
        interrupted and resumed run sees exactly the batches of an unbroken one.
        """
        weights = torch.cat([torch.full((len(p),), 1.0 / len(p)) for p in self.parts])
        order = list(WeightedRandomSampler(weights, self.num_samples, replacement=True,
                                           generator=torch.Generator().manual_seed(self.seed)))
        done = self.trainer.global_step if self.trainer is not None else 0
        # A fresh loader draws its base seed from the global RNG (torch's default); the unbroken run
        # drew it before step 0, so a resumed one, whose RNG state comes from the checkpoint
        # (training.RandomState), must not draw it again.
        return DataLoader(ConcatDataset(self.parts), batch_size=self.batch_size,
                          sampler=order[done * self.batch_size:],
                          generator=torch.Generator().manual_seed(self.seed) if done else None)
