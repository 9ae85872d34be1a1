"""Any image classification set in torchvision's ImageFolder layout (ImageNet included):
``<data_dir>/<root>/train/<class>/*.jpg`` and ``val/<class>/...``; ``test/`` if present, else val
serves as the test split.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from sparse_lab.data import DATASETS
from sparse_lab.data.base import ImageDataModule
from sparse_lab.errors import UserError
from sparse_lab.protocols import DataInfo

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageFolderDataModule(ImageDataModule):
    def __init__(
        self,
        data_dir: str,
        root: str = "imagenet",
        batch_size: int = 64,
        image_size: int = 224,
        num_workers: int = 2,
    ):
        super().__init__(batch_size, num_workers)
        self.root = Path(data_dir) / root
        for split in ("train", "val"):
            if not (self.root / split).is_dir():
                raise UserError(
                    f"imagefolder not found: missing {self.root / split} (expected <class>/<image> folders)"
                )
        classes = sorted(p.name for p in (self.root / "train").iterdir() if p.is_dir())
        if not classes:
            raise UserError(f"imagefolder {self.root / 'train'} has no class folders")
        self.image_size = int(image_size)
        self.info = DataInfo("image", num_classes=len(classes), sizes=dict(image_size=self.image_size, in_chans=3))

    def _transform(self, train: bool) -> v2.Compose:
        if train:
            steps = [v2.RandomResizedCrop(self.image_size, antialias=True), v2.RandomHorizontalFlip()]
        else:  # the usual 0.875 centre crop
            steps = [v2.Resize(round(self.image_size / 0.875), antialias=True), v2.CenterCrop(self.image_size)]
        return v2.Compose(
            [v2.ToImage(), *steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        test_split = "test" if (self.root / "test").is_dir() else "val"
        self.train_set = image_folder(self.root / "train", self._transform(train=True))
        self.val_set = image_folder(self.root / "val", self._transform(train=False))
        self.test_set = image_folder(self.root / test_split, self._transform(train=False))
        for split, dataset in (("val", self.val_set), (test_split, self.test_set)):
            if dataset.classes != self.train_set.classes:
                raise UserError(
                    f"imagefolder {self.root / split}: its class folders differ from those of {self.root / 'train'}"
                )


def image_folder(folder: Path, transform) -> ImageFolder:
    """torchvision's ImageFolder; a class folder without images is one line naming the folder."""
    try:
        return ImageFolder(folder, transform=transform, loader=load_rgb)
    except FileNotFoundError as exc:  # "Found no valid file for the classes ..."
        raise UserError(f"imagefolder {folder}: {str(exc).splitlines()[0]}") from None


def load_rgb(path: str):
    """An image as RGB; a truncated or foreign file is one line naming it (it fails when a batch reads it)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except UnidentifiedImageError:
        raise UserError(f"imagefolder file {path} is not an image PIL can read") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated data, a bad header
        raise UserError(f"imagefolder file {path} is unreadable ({exc})") from None


@DATASETS.register("imagefolder")
def imagefolder(**kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(**kwargs)
