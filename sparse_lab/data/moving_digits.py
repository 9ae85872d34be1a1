"""Moving digits: generated videos of a handwritten digit moving across a canvas (no download).

Each of scikit-learn's 1797 digits (8x8) is resized to ``digit_size`` and moved over a
``image_size x image_size`` canvas for ``num_frames`` frames at a constant velocity (1 to
``max_speed`` pixels a frame on each axis, random signs), bouncing off the borders, with independent
Gaussian sensor noise (``noise``) added to every frame. Positions, velocities and noise come from
``seed``; the train/val/test split from ``split_seed``, as for ``digits``. The label is the digit.

Batches are ``(videos [B, T, C, H, W], labels [B])``; the modality is ``video``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from sparse_lab.data import DATASETS
from sparse_lab.data.base import ImageDataModule, seeded_split
from sparse_lab.errors import UserError
from sparse_lab.protocols import DataInfo


def bounce(position: torch.Tensor, limit: int) -> torch.Tensor:
    """Reflect unbounded positions into [0, limit] (a ball bouncing between two walls)."""
    if limit == 0:
        return torch.zeros_like(position)
    m = position.remainder(2 * limit)
    return torch.where(m > limit, 2 * limit - m, m)


def make_videos(
    digits: torch.Tensor, num_frames: int, image_size: int, max_speed: int, noise: float, generator: torch.Generator
) -> torch.Tensor:
    """``digits`` [N, s, s] in [0, 1] -> videos [N, T, 1, H, W]."""
    n, size = digits.shape[0], digits.shape[-1]
    limit = image_size - size
    start = torch.randint(0, limit + 1, (n, 2), generator=generator)
    speed = torch.randint(1, max_speed + 1, (n, 2), generator=generator)
    sign = torch.randint(0, 2, (n, 2), generator=generator) * 2 - 1
    t = torch.arange(num_frames).view(1, num_frames, 1)
    positions = bounce(start.unsqueeze(1) + (speed * sign).unsqueeze(1) * t, limit)  # [N, T, 2] (row, col)
    videos = torch.zeros(n, num_frames, 1, image_size, image_size)
    offsets = torch.arange(size)
    samples = torch.arange(n).view(n, 1, 1)
    for f in range(num_frames):  # paste every digit of frame f at once
        rows = (positions[:, f, 0:1] + offsets).view(n, size, 1)
        cols = (positions[:, f, 1:2] + offsets).view(n, 1, size)
        videos[samples, f, 0, rows, cols] = digits
    if noise > 0:
        videos += noise * torch.randn(videos.shape, generator=generator)
    return videos


class MovingDigitsDataModule(ImageDataModule):
    def __init__(
        self,
        batch_size: int = 32,
        image_size: int = 32,
        digit_size: int = 12,
        num_frames: int = 8,
        max_speed: int = 3,
        noise: float = 0.1,
        seed: int = 0,
        split: tuple[float, float, float] = (0.7, 0.15, 0.15),
        split_seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__(batch_size, num_workers)
        if not 1 <= int(digit_size) <= int(image_size):
            raise UserError(f"data.digit_size must be between 1 and data.image_size={image_size}, got {digit_size}")
        if int(num_frames) < 1 or int(max_speed) < 1 or float(noise) < 0:
            raise UserError("data.num_frames and data.max_speed must be >= 1 and data.noise >= 0")
        if len(split) != 3 or abs(sum(split) - 1.0) > 1e-6 or min(split) <= 0:
            raise UserError(f"data.split must be three positive fractions summing to 1, got {list(split)}")
        self.image_size, self.digit_size, self.num_frames = int(image_size), int(digit_size), int(num_frames)
        self.max_speed, self.noise, self.seed = int(max_speed), float(noise), int(seed)
        self.split, self.split_seed = tuple(split), int(split_seed)
        self.info = DataInfo(
            "video", num_classes=10, sizes=dict(image_size=self.image_size, in_chans=1, num_frames=self.num_frames)
        )

    def build(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All videos [N, T, 1, H, W] (unnormalised, in about [0, 1]) and labels [N]."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        images = F.interpolate(images, size=(self.digit_size, self.digit_size), mode="bilinear", align_corners=False)
        generator = torch.Generator().manual_seed(self.seed)
        videos = make_videos(images[:, 0], self.num_frames, self.image_size, self.max_speed, self.noise, generator)
        return videos, torch.as_tensor(digits.target, dtype=torch.long)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        videos, labels = self.build()
        train_idx, val_idx, test_idx = seeded_split(len(labels), self.split, self.split_seed)
        mean, std = videos[train_idx].mean(), videos[train_idx].std()
        videos = (videos - mean) / std
        self.train_set, self.val_set, self.test_set = (
            TensorDataset(videos[idx], labels[idx]) for idx in (train_idx, val_idx, test_idx)
        )

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, self.num_frames, 1, self.image_size, self.image_size)


@DATASETS.register("moving_digits")
def moving_digits(**kwargs) -> MovingDigitsDataModule:
    return MovingDigitsDataModule(**kwargs)
