"""CIFAR-10 from the standard python-pickle layout (``<data_dir>/cifar-10-batches-py/data_batch_1..5``,
``test_batch``), as distributed at https://www.cs.toronto.edu/~kriz/cifar.html. Never downloads.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from sparse_lab.data import DATASETS
from sparse_lab.data.base import ImageDataModule, holdout_split, require_samples
from sparse_lab.errors import UserError
from sparse_lab.protocols import DataInfo

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def read_batches(folder: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise UserError(f"cifar10 not found: missing {path} (set paths.data_dir to the folder holding {FOLDER}/)")
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
        except Exception as exc:  # any unpickling failure means a damaged file
            raise UserError(
                f"cifar10 file {path} is unreadable ({type(exc).__name__}); re-extract the archive"
            ) from None
        if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
            raise UserError(f"cifar10 file {path} is not a CIFAR-10 batch (no data and labels); re-extract the archive")
        try:
            data, targets = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
        except ValueError as exc:  # ragged lists
            raise UserError(f"cifar10 file {path} holds malformed arrays ({exc}); re-extract the archive") from None
        check_batch(path, data, targets)
        images.append(torch.as_tensor(data, dtype=torch.uint8).reshape(-1, 3, 32, 32))
        labels.append(torch.as_tensor(targets, dtype=torch.long))
    return torch.cat(images), torch.cat(labels)


def check_batch(path: Path, data: np.ndarray, labels: np.ndarray) -> None:
    """A batch file's arrays: [N, 3072] pixel values 0-255 (32x32x3, channel-major) and N labels 0-9."""
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or not np.issubdtype(data.dtype, np.integer):
        raise UserError(
            f"cifar10 file {path} holds data of shape {list(data.shape)} ({data.dtype}), expected [N, 3072] "
            "integers (32x32x3 pixels per image); re-extract the archive"
        )
    if len(data) == 0:
        raise UserError(f"cifar10 file {path} holds no images; re-extract the archive")
    if data.dtype != np.uint8 and (data.min() < 0 or data.max() > 255):
        raise UserError(f"cifar10 file {path} holds pixel values outside 0-255; re-extract the archive")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(
            f"cifar10 file {path} has {len(data)} images but labels of shape {list(labels.shape)} "
            f"({labels.dtype}); re-extract the archive"
        )
    if labels.min() < 0 or labels.max() >= 10:
        raise UserError(
            f"cifar10 file {path} has labels outside 0-9 (e.g. {int(labels.max())}); re-extract the archive"
        )


class TransformedTensors(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


class Cifar10DataModule(ImageDataModule):
    def __init__(
        self,
        data_dir: str,
        batch_size: int = 128,
        image_size: int = 32,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        augment: bool = True,
        num_workers: int = 2,
    ):
        super().__init__(batch_size, num_workers)
        self.folder = Path(data_dir) / FOLDER
        self.image_size, self.val_fraction, self.split_seed, self.augment = (
            int(image_size),
            val_fraction,
            split_seed,
            augment,
        )
        self.info = DataInfo("image", num_classes=10, sizes=dict(image_size=self.image_size, in_chans=3))

    def _transform(self, train: bool) -> v2.Compose:
        steps = [v2.Resize(self.image_size, antialias=True)] if self.image_size != 32 else []
        if train and self.augment:
            steps += [v2.RandomCrop(self.image_size, padding=self.image_size // 8), v2.RandomHorizontalFlip()]
        return v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_images, train_labels = read_batches(self.folder, TRAIN_FILES)
        test_images, test_labels = read_batches(self.folder, TEST_FILES)
        train_aug = TransformedTensors(train_images, train_labels, self._transform(train=True))
        train_plain = TransformedTensors(train_images, train_labels, self._transform(train=False))
        self.train_set, _ = holdout_split(train_aug, self.val_fraction, self.split_seed)
        _, self.val_set = holdout_split(train_plain, self.val_fraction, self.split_seed)
        self.test_set = TransformedTensors(test_images, test_labels, self._transform(train=False))
        require_samples(
            f"cifar10 at {self.folder}",
            {"train": self.train_set, "val": self.val_set, "test": self.test_set},
        )


@DATASETS.register("cifar10")
def cifar10(**kwargs) -> Cifar10DataModule:
    return Cifar10DataModule(**kwargs)
