"""Fixed-length training blocks and the LightningDataModule that serves them."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, WeightedRandomSampler

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
        """The seeded sample order, as a loader Lightning checkpoints mid-epoch (``ResumableLoader``)."""
        weights = torch.cat([torch.full((len(p),), 1.0 / len(p)) for p in self.parts])
        order = list(WeightedRandomSampler(weights, self.num_samples, replacement=True,
                                           generator=torch.Generator().manual_seed(self.seed)))
        trainer = self.trainer
        loader = ResumableLoader(ConcatDataset(self.parts), self.batch_size, order, self.seed,
                                 trained_batches=lambda: trainer.global_step)
        # Lightning restores global_step before it asks for the loader: a checkpoint without the
        # loader's own state (written before it had one) resumes at the same batch
        if trainer is not None and trainer.global_step:
            loader.load_state_dict({"batches": trainer.global_step})
        return loader


class FromPosition(Sampler[int]):
    """A fixed sample order served from ``start`` on; its length is the whole order's, so Lightning's
    epoch arithmetic (last batch, checkpoint cadence) is that of an unbroken run."""

    def __init__(self, order: list[int]):
        self.order, self.start = order, 0

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0  # a later epoch starts from the beginning
        return iter(self.order[start:])

    def __len__(self) -> int:
        return len(self.order)


class ResumableLoader(DataLoader):
    """A DataLoader with Lightning's ``state_dict``/``load_state_dict`` protocol: the checkpoint holds
    how many batches were trained on, and a resumed run serves the batches after them.

    Without it Lightning restarts a plain loader's epoch from its first batch after a mid-epoch
    resume, so the resumed run trains on other batches than an unbroken one.
    ``trained_batches`` answers how many batches the model has stepped on (the trainer's global step:
    the loader itself is ahead of it by Lightning's prefetch).
    """

    def __init__(self, dataset: Dataset, batch_size: int, order: list[int], seed: int,
                 trained_batches: Callable[[], int], collate_fn: Callable | None = None):
        super().__init__(dataset, batch_size=batch_size, sampler=FromPosition(order),
                         collate_fn=collate_fn)
        self.seed, self._trained_batches = seed, trained_batches

    def state_dict(self) -> dict[str, int]:
        return {"batches": self._trained_batches()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.start = state["batches"] * self.batch_size
        # A fresh iterator draws its base seed from the global RNG; the unbroken run drew it before
        # step 0, and a resumed run's RNG comes from the checkpoint (training.RandomState), so it
        # must not draw again.
        self.generator = torch.Generator().manual_seed(self.seed)
