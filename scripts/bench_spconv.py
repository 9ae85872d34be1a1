"""E-3DSNN's sparse convolutions (spconv) vs the same network with dense Conv3d on the same voxel grid.

Forward + backward of one training step on shapes3d batches, median over repeats, in one process.
The dense twin has the same layers and weights shapes: SubMConv3d(3x3x3) -> Conv3d(3, padding 1),
SparseConv3d(2, stride 2) -> Conv3d(2, stride 2), BatchNorm1d -> BatchNorm3d, the same integer
spiking neurons, mean pooling over the occupied cells of the last grid. Run:

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/bench_spconv.py [--preset small] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from sparse_lab.data.points import voxelize
from sparse_lab.data.shapes3d import Shapes3DDataModule
from sparse_lab.measure import count_macs
from sparse_lab.models import build_model
from sparse_lab.models.e3dsnn import PRESETS, IntegerLIF


class DenseUnit(nn.Module):
    def __init__(self, cin, cout, kind, levels, spike_in=True):
        super().__init__()
        self.spike = IntegerLIF(levels) if spike_in else None
        self.conv = (
            nn.Conv3d(cin, cout, 3, padding=1, bias=False) if kind == "subm" else nn.Conv3d(cin, cout, 2, 2, bias=False)
        )
        self.bn = nn.BatchNorm3d(cout, eps=1e-3)

    def forward(self, x):
        return self.bn(self.conv(self.spike(x) if self.spike is not None else x))


class DenseBlock(nn.Module):
    def __init__(self, c, levels):
        super().__init__()
        self.unit1, self.unit2, self.unit3 = (DenseUnit(c, c, "subm", levels) for _ in range(3))

    def forward(self, x):
        x = x + self.unit1(x)
        return x + self.unit3(self.unit2(x))


class DenseE3DSNN(nn.Module):
    def __init__(self, num_classes, in_chans, embed_dim, channels, depths, levels=4):
        super().__init__()
        e = embed_dim
        self.stem = nn.Sequential(
            DenseUnit(in_chans, e, "subm", levels, spike_in=False),
            DenseUnit(e, e, "subm", levels),
            DenseUnit(e, e, "subm", levels),
        )
        stages, cin = [], e
        for c, d in zip(channels, depths):
            stages.append(nn.Sequential(DenseUnit(cin, c, "down", levels), *[DenseBlock(c, levels) for _ in range(d)]))
            cin = c
        self.stages = nn.Sequential(*stages)
        self.head_spike = IntegerLIF(levels)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, grid):
        occupied = (grid.abs().sum(1, keepdim=True) > 0).float()
        x = self.stages(self.stem(grid))
        for _ in self.stages:  # occupancy of the last grid: any occupied input cell below it
            occupied = F.max_pool3d(occupied, 2)
        s = self.head_spike(x) * occupied
        return self.head(s.sum((2, 3, 4)) / occupied.sum((2, 3, 4)).clamp_min(1))


def densify(batch):
    g = batch.spatial_shape
    grid = torch.zeros(batch.batch_size, batch.features.shape[1], *g)
    b, z, y, x = batch.coords.long().unbind(1)
    grid[b, :, z, y, x] = batch.features
    return grid


def step_ms(model, x, y, repeats):
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i:  # the first step warms up
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--voxel-size", type=float, default=0.0625)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    dm = Shapes3DDataModule(train_size=args.batch, val_size=1, test_size=1, voxel_size=args.voxel_size)
    dm.setup()
    points = dm.train_set.points[: args.batch]
    labels = dm.train_set.labels[: args.batch]
    sparse_in = voxelize(points, args.voxel_size)
    dense_in = densify(sparse_in)
    g = sparse_in.spatial_shape[0]
    geometry = PRESETS[args.preset]
    sparse = build_model("e3dsnn", modality="point_cloud", num_classes=12, in_chans=4, grid_size=g, preset=args.preset)
    dense = DenseE3DSNN(12, 4, **geometry)
    n_sparse = sum(p.numel() for p in sparse.parameters())
    n_dense = sum(p.numel() for p in dense.parameters())
    assert n_sparse == n_dense + 0, (n_sparse, n_dense)  # same weights, only the convolution differs

    one = voxelize(points[:1], args.voxel_size)
    macs_sparse = count_macs(sparse, one).dense
    macs_dense = count_macs(dense, densify(one)).dense
    occupancy = len(sparse_in.coords) / (args.batch * g**3)

    sparse_ms = step_ms(sparse, sparse_in, labels, args.repeats)
    dense_ms = step_ms(dense, dense_in, labels, args.repeats)
    print(
        f"threads={torch.get_num_threads()} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} "
        f"load={os.getloadavg()[0]:.1f}"
    )
    print(f"preset={args.preset} params={n_sparse:,} grid={g}^3 batch={args.batch} occupancy={occupancy:.2%}")
    print(
        f"MACs per sample (forward): sparse {macs_sparse / 1e6:.1f}M, dense {macs_dense / 1e6:.1f}M "
        f"(dense/sparse {macs_dense / macs_sparse:.1f}x)"
    )
    print(
        f"forward+backward per batch: sparse {sparse_ms:.0f} ms, dense Conv3d {dense_ms:.0f} ms, "
        f"dense/sparse = {dense_ms / sparse_ms:.2f}x"
    )


if __name__ == "__main__":
    main()
