"""Point-cloud classification data: voxelization into sparse-convolution inputs, and the datamodule base.

A batch is ``(VoxelBatch, labels)`` (``sparse_lab.batches``); here:

- ``features`` ``[V, C]`` float: per occupied voxel, the mean x, y, z of its points (in [-1, 1]) and a
  constant 1 (occupancy), so ``C = 4``;
- ``coords`` ``[V, 4]`` int32: ``(batch index, z, y, x)`` voxel indices;
- ``spatial_shape``: ``(G, G, G)`` with ``G = round(2 / voxel_size)`` (clouds live in [-1, 1]^3);
- ``batch_size``.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from sparse_lab.batches import VoxelBatch
from sparse_lab.data.base import ImageDataModule
from sparse_lab.errors import UserError

VOXEL_FEATURES = 4  # mean x, y, z + occupancy


def grid_size(voxel_size: float) -> int:
    voxel_size = float(voxel_size)
    if not 0.0 < voxel_size <= 1.0:
        raise UserError(f"data.voxel_size must be in (0, 1] (clouds span [-1, 1]), got {voxel_size:g}")
    return max(1, round(2.0 / voxel_size))


def voxelize(points: torch.Tensor, voxel_size: float) -> VoxelBatch:
    """Voxelize a batch of clouds ``[B, P, 3]`` in [-1, 1]^3 (points outside are clamped to the border).

    Each occupied voxel appears once per cloud; its feature is the mean of its points plus occupancy.
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"expected points of shape [B, P, 3], got {list(points.shape)}")
    b, p, _ = points.shape
    g = grid_size(voxel_size)
    cells = ((points + 1.0) * (g / 2.0)).floor().long().clamp_(0, g - 1)  # [B, P, 3] as x, y, z
    batch_index = torch.arange(b, device=points.device).repeat_interleave(p)
    cells = cells.reshape(-1, 3)
    keys = ((batch_index * g + cells[:, 2]) * g + cells[:, 1]) * g + cells[:, 0]
    unique, inverse = torch.unique(keys, return_inverse=True)  # sorted: batch-major
    counts = torch.zeros(len(unique), device=points.device).index_add_(
        0, inverse, torch.ones_like(keys, dtype=torch.float32)
    )
    sums = torch.zeros(len(unique), 3, device=points.device).index_add_(0, inverse, points.reshape(-1, 3).float())
    features = torch.cat([sums / counts[:, None], torch.ones(len(unique), 1, device=points.device)], 1)
    x = unique % g
    y = (unique // g) % g
    z = (unique // (g * g)) % g
    bi = unique // (g * g * g)
    coords = torch.stack([bi, z, y, x], 1).int()
    return VoxelBatch(features, coords, (g, g, g), b)


def random_rotation_matrices(
    n: int, generator: torch.Generator | None = None, up_axis_only: bool = False
) -> torch.Tensor:
    """``n`` uniformly random rotations ``[n, 3, 3]`` (about the z axis only if ``up_axis_only``)."""
    if up_axis_only:
        angle = torch.rand(n, generator=generator) * 2 * math.pi
        c, s, zero, one = angle.cos(), angle.sin(), torch.zeros(n), torch.ones(n)
        return torch.stack([c, -s, zero, s, c, zero, zero, zero, one], 1).reshape(n, 3, 3)
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=generator))
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)  # Haar-uniform orthogonal
    det = torch.linalg.det(q)
    q[:, :, 0] *= det.sign().unsqueeze(1)  # proper rotations only
    return q


class VoxelCollate:
    """Stack ``(points, label)`` pairs, optionally augment (train), voxelize."""

    def __init__(
        self,
        voxel_size: float,
        augment: bool = False,
        up_axis_only: bool = False,
        scale_range: tuple[float, float] = (0.85, 1.15),
        jitter: float = 0.01,
    ):
        self.voxel_size, self.augment, self.up_axis_only = float(voxel_size), bool(augment), bool(up_axis_only)
        self.scale_range, self.jitter = tuple(scale_range), float(jitter)

    def __call__(self, items):
        points = torch.stack([torch.as_tensor(p, dtype=torch.float32) for p, _ in items])
        labels = torch.as_tensor([int(y) for _, y in items], dtype=torch.long)
        if self.augment:
            points = self.augment_points(points)
        return voxelize(points, self.voxel_size), labels

    def augment_points(self, points: torch.Tensor) -> torch.Tensor:
        b = points.shape[0]
        rot = random_rotation_matrices(b, up_axis_only=self.up_axis_only)
        low, high = self.scale_range
        scale = low + (high - low) * torch.rand(b, 1, 3)
        points = (points @ rot.transpose(1, 2)) * scale + self.jitter * torch.randn_like(points)
        return points.clamp(-1.0, 1.0)


class PointsDataset(Dataset):
    """Clouds ``[N, P, 3]`` with labels ``[N]``."""

    def __init__(self, points: torch.Tensor, labels: torch.Tensor):
        self.points, self.labels = points, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.points[i], self.labels[i]


class PointCloudDataModule(ImageDataModule):
    """Loaders that voxelize in the collate; ``example_input`` is the first test cloud, voxelized."""

    def __init__(
        self,
        batch_size: int,
        voxel_size: float,
        augment: bool,
        num_workers: int = 0,
        up_axis_only: bool = False,
        epoch_size: int | None = None,
    ):
        super().__init__(batch_size, num_workers)
        if epoch_size is not None and int(epoch_size) < 1:
            raise UserError(f"data.epoch_size must be at least 1 (or null: the whole training split), got {epoch_size}")
        self.epoch_size = None if epoch_size is None else int(epoch_size)
        self.voxel_size = float(voxel_size)
        self.grid_size = grid_size(self.voxel_size)
        self.augment, self.up_axis_only = bool(augment), bool(up_axis_only)

    def train_sampler(self, dataset: Dataset) -> Sampler | None:
        # An epoch may be a random draw of epoch_size clouds from the training split (without replacement).
        if self.epoch_size is not None and self.epoch_size < len(dataset):
            return RandomSampler(dataset, num_samples=self.epoch_size)
        return None

    def _loader(self, dataset: Dataset, train: bool, collate_fn=None) -> DataLoader:
        collate = VoxelCollate(self.voxel_size, augment=train and self.augment, up_axis_only=self.up_axis_only)
        return super()._loader(dataset, train, collate_fn=collate)

    def example_input(self) -> VoxelBatch:
        """One cloud of the test split (batch size 1): MACs of sparse convolutions depend on its occupancy."""
        self.setup("test")
        return VoxelCollate(self.voxel_size)([self.test_set[0]])[0]


def normalize_unit_sphere(points: torch.Tensor) -> torch.Tensor:
    """Centre each cloud ``[..., P, 3]`` and scale it into the unit ball."""
    points = points - points.mean(-2, keepdim=True)
    radius = points.norm(dim=-1).amax(-1, keepdim=True).clamp_min(1e-8)
    return points / radius.unsqueeze(-1)
