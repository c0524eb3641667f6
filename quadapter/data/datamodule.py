"""Fixed-length training blocks and the LightningDataModule that serves them."""

from __future__ import annotations

from typing import Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, WeightedRandomSampler


class TokenBlocks(Dataset):
    """Non-overlapping windows of ``block_size`` tokens cut from one token sequence."""

    def __init__(self, ids: torch.Tensor, block_size: int):
        if len(ids) < block_size:
            raise ValueError(f"a sequence of {len(ids)} tokens is shorter than one block ({block_size})")
        self.ids, self.block_size = ids, block_size

    def __len__(self) -> int:
        return len(self.ids) // self.block_size

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.ids[i * self.block_size:(i + 1) * self.block_size]


class LMDataModule(pl.LightningDataModule):
    """Random training blocks drawn with equal weight from each corpus, however large each one is.

    Sampling with replacement for a fixed number of samples decouples the training length from the
    corpus sizes, so a small fine-tuning set and a large one train for the same number of steps.
    """

    def __init__(self, train: Sequence[torch.Tensor], block_size: int, batch_size: int,
                 num_samples: int, seed: int = 0):
        super().__init__()
        self.parts = [TokenBlocks(ids, block_size) for ids in train]
        self.batch_size, self.num_samples, self.seed = batch_size, num_samples, seed

    def train_dataloader(self) -> DataLoader:
        weights = torch.cat([torch.full((len(p),), 1.0 / len(p)) for p in self.parts])
        sampler = WeightedRandomSampler(weights, self.num_samples, replacement=True,
                                        generator=torch.Generator().manual_seed(self.seed))
        return DataLoader(ConcatDataset(self.parts), batch_size=self.batch_size, sampler=sampler)
