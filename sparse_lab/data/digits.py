"""scikit-learn's bundled handwritten digits (1797 images, 8x8, 10 classes), as 32x32 RGB tensors.

Nothing is downloaded: the data ships inside scikit-learn. The split is fixed by ``split_seed``
(independent of the run's seed), so every run evaluates on the same test images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from sparse_lab.data import DATASETS
from sparse_lab.data.base import ImageDataModule, seeded_split
from sparse_lab.errors import UserError
from sparse_lab.protocols import DataInfo


def load_digits_tensors(image_size: int, in_chans: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N, 1, 8, 8] in [0, 1]
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return images.expand(-1, in_chans, -1, -1).contiguous(), torch.as_tensor(digits.target, dtype=torch.long)


class DigitsDataModule(ImageDataModule):
    def __init__(
        self,
        batch_size: int = 64,
        image_size: int = 32,
        in_chans: int = 3,
        split: tuple[float, float, float] = (0.7, 0.15, 0.15),
        split_seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__(batch_size, num_workers)
        if len(split) != 3 or abs(sum(split) - 1.0) > 1e-6 or min(split) <= 0:
            raise UserError(f"data.split must be three positive fractions summing to 1, got {list(split)}")
        self.image_size, self.in_chans = int(image_size), int(in_chans)
        self.split, self.split_seed = tuple(split), int(split_seed)
        self.info = DataInfo("image", num_classes=10, sizes=dict(image_size=self.image_size, in_chans=self.in_chans))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels = load_digits_tensors(self.image_size, self.in_chans)
        train_idx, val_idx, test_idx = seeded_split(len(labels), self.split, self.split_seed)
        # Normalise with statistics of the training part only.
        mean, std = images[train_idx].mean(), images[train_idx].std()
        images = (images - mean) / std
        self.train_set, self.val_set, self.test_set = (
            TensorDataset(images[idx], labels[idx]) for idx in (train_idx, val_idx, test_idx)
        )


@DATASETS.register("digits")
def digits(**kwargs) -> DigitsDataModule:
    return DigitsDataModule(**kwargs)
