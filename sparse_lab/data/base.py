"""What every image datamodule shares: split sizes, loaders, the ``info`` a model is built from."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from sparse_lab.errors import UserError, check_range


def seeded_split(n: int, fractions: tuple[float, ...], seed: int) -> list[torch.Tensor]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into consecutive parts of the given fractions."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [round(f * n) for f in fractions[:-1]]
    sizes.append(n - sum(sizes))
    return list(torch.split(perm, sizes))


class ImageDataModule(pl.LightningDataModule):
    """Holds train/val/test datasets built by ``setup`` and serves them with DataLoaders."""

    def __init__(self, batch_size: int, num_workers: int = 0, eval_batch_size: int | None = None):
        super().__init__()
        if int(batch_size) < 1:
            raise UserError(f"data.batch_size must be at least 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or 4 * batch_size)
        self.num_workers = int(num_workers)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def train_sampler(self, dataset: Dataset) -> Sampler | None:
        """How an epoch draws the training split; None: all of it, shuffled. (A datamodule whose epoch is a
        random draw of fewer samples, or a stream of fresh ones, returns its sampler.)"""
        return None

    def _loader(self, dataset: Dataset, train: bool, collate_fn=None) -> DataLoader:
        sampler = self.train_sampler(dataset) if train else None
        drawn = len(sampler) if sampler is not None else len(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and drawn > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def example_input(self) -> torch.Tensor:
        """One input of batch size 1, for FLOP counting and latency measurement."""
        return torch.zeros(1, self.info.sizes["in_chans"], self.image_size, self.image_size)


def require_samples(where: str, splits: dict[str, Dataset], allow_empty: tuple[str, ...] = ()) -> None:
    """One clear error when a split a run trains or tests on holds no sample (a partial dataset, a split
    too small for its fractions); ``where`` names the files or folder the splits come from. An empty
    validation split only means no validation (Lightning skips it)."""
    for split, dataset in splits.items():
        if len(dataset) == 0 and split not in (*allow_empty, "val"):
            raise UserError(f"{where}: the {split} split is empty (too few samples on disk for the configured split)")


def holdout_split(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Subset, Subset]:
    """Split a training set into train and validation parts, seeded."""
    check_range("data.val_fraction", val_fraction, 0.0, 1.0)
    train_idx, val_idx = seeded_split(len(dataset), (1 - val_fraction, val_fraction), seed)
    return Subset(dataset, train_idx.tolist()), Subset(dataset, val_idx.tolist())
