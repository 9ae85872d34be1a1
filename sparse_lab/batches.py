"""Batch types shared by data modules and models (neutral: neither package imports the other).

``VoxelBatch`` is what spconv's ``SparseConvTensor`` is built from, in plain tensors so Lightning moves
it between devices like any batch:

- ``features`` ``[V, C]`` float: per occupied voxel, e.g. the mean x, y, z of its points and occupancy;
- ``coords`` ``[V, 4]`` int32: ``(batch index, z, y, x)`` voxel indices;
- ``spatial_shape``: the grid, ``(G, G, G)``;
- ``batch_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class VoxelBatch:
    features: torch.Tensor  # [V, C] float
    coords: torch.Tensor  # [V, 4] int32: batch, z, y, x
    spatial_shape: tuple[int, int, int]
    batch_size: int

    def __len__(self) -> int:
        return self.batch_size
