"""flow3d: procedurally generated scene-flow pairs (seeded; nothing is downloaded).

A scene holds a few solids (boxes, ellipsoids, cylinders, cones; random size, aspect, yaw and place
on the ground plane z = 0). Each solid is *dynamic* with probability ``dynamic_fraction`` (its own
rigid motion: a yaw about its centre and a translation) or static; the sensor moves too (ego-motion:
a yaw and a mostly forward translation), so every point, static ones included, moves in the second
frame's coordinates. Frame 2 is the same surface samples after the motions: every point has a true
correspondence (no occlusion by construction) and the flow is exact.

As in the HPLFlowNet preprocessing of FlyingThings3D, ``pc1`` and ``pc2`` are *independent* random
subsets (``num_points`` each) of a larger pool of surface samples (``pool_factor`` x ``num_points``),
so pc2 holds no exact copy of a pc1 point; each frame then gets its own Gaussian sensor noise. There
is no ground plane: flat ground has no features to match (HPLFlowNet removes KITTI's ground for the
same reason).

Scene ``i`` of split ``s`` is drawn from ``numpy.random.default_rng([seed, s, i])``: the data is the
same in every run, and the three splits never share a scene. With ``fresh_train_scenes`` (default)
the training split is an endless stream: epoch e trains on scenes e·size ... (e+1)·size − 1, so a
long run never sees a scene twice (with 64 fixed scenes SCTN overfit: train EPE 0.13, val 0.22).
Validation and test scenes are fixed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from sparse_lab.data import DATASETS
from sparse_lab.data.scene_flow import SceneFlowDataModule
from sparse_lab.errors import UserError

SHAPES = ("box", "ellipsoid", "cylinder", "cone")
SPLITS = {"train": 0, "val": 1, "test": 2}


def unit_surface(shape: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points on the surface of a unit-sized solid centred at the origin (extent [-0.5, 0.5]^3)."""
    if shape == "ellipsoid":
        v = rng.normal(size=(n, 3))
        return 0.5 * v / np.linalg.norm(v, axis=1, keepdims=True)
    if shape == "box":
        p = rng.uniform(-0.5, 0.5, size=(n, 3))
        axis = rng.integers(0, 3, n)
        p[np.arange(n), axis] = rng.choice([-0.5, 0.5], n)
        return p
    angle = rng.uniform(0, 2 * math.pi, n)
    u = rng.uniform(0, 1, n)
    if shape == "cylinder":  # radius 0.5, height 1: side 2/3 of the area, caps 1/3
        side = rng.uniform(0, 1, n) < 2 / 3
        radius = np.where(side, 0.5, 0.5 * np.sqrt(u))
        z = np.where(side, rng.uniform(-0.5, 0.5, n), rng.choice([-0.5, 0.5], n))
    elif shape == "cone":  # apex at z = 0.5, base radius 0.5 at z = -0.5: lateral 69% of the area
        lateral = rng.uniform(0, 1, n) < 0.69
        t = np.sqrt(u)  # distance from the apex as a fraction: uniform over the lateral area
        radius = np.where(lateral, 0.5 * t, 0.5 * np.sqrt(rng.uniform(0, 1, n)))
        z = np.where(lateral, 0.5 - t, -0.5)
    else:
        raise ValueError(shape)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle), z], axis=1)


def yaw_matrix(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def generate_scene(
    rng: np.random.Generator,
    num_points: int = 512,
    pool_factor: int = 4,
    num_objects: tuple[int, int] = (3, 5),
    extent: float = 2.0,
    object_size: tuple[float, float] = (0.5, 1.2),
    dynamic_fraction: float = 0.7,
    max_translation: float = 0.5,
    max_rotation_deg: float = 10.0,
    ego_translation: float = 0.5,
    ego_rotation_deg: float = 5.0,
    noise: float = 0.01,
) -> dict[str, np.ndarray]:
    """One pair: ``pc1``, ``pc2`` [num_points, 3] and the flow [num_points, 3] of pc1's points (metres)."""
    k = int(rng.integers(num_objects[0], num_objects[1] + 1))
    sizes = rng.uniform(*object_size, size=(k, 1)) * rng.uniform(0.6, 1.4, size=(k, 3))
    areas = sizes[:, 0] * sizes[:, 1] + sizes[:, 1] * sizes[:, 2] + sizes[:, 0] * sizes[:, 2]
    pool = pool_factor * num_points
    counts = np.maximum(1, np.floor(pool * areas / areas.sum()).astype(int))
    counts[np.argmax(counts)] += pool - counts.sum()

    first, second = [], []
    for j in range(k):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        centre = np.array([*rng.uniform(-extent, extent, 2), sizes[j, 2] / 2])
        local = unit_surface(shape, int(counts[j]), rng) * sizes[j]
        p = local @ yaw_matrix(rng.uniform(0, 2 * math.pi)).T + centre
        if rng.uniform() < dynamic_fraction:  # its own rigid motion, about its centre
            turn = yaw_matrix(math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg)))
            shift = np.array(
                [*rng.uniform(-max_translation, max_translation, 2), rng.uniform(-0.05, 0.05) * max_translation]
            )
            moved = (p - centre) @ turn.T + centre + shift
        else:
            moved = p
        first.append(p)
        second.append(moved)
    p1, moved = np.concatenate(first), np.concatenate(second)
    # Ego-motion: the sensor turns by `yaw` and moves by `t`; frame 2 sees the world in its new pose.
    yaw = math.radians(rng.uniform(-ego_rotation_deg, ego_rotation_deg))
    t = np.array([rng.uniform(0, ego_translation), rng.uniform(-0.2, 0.2) * ego_translation, 0.0])
    p2 = (moved - t) @ yaw_matrix(yaw)  # = R^T (p - t) for each row
    idx1 = rng.choice(len(p1), num_points, replace=False)
    idx2 = rng.choice(len(p1), num_points, replace=False)
    return {
        "pc1": p1[idx1] + rng.normal(0, noise, (num_points, 3)),
        "pc2": p2[idx2] + rng.normal(0, noise, (num_points, 3)),
        "flow": p2[idx1] - p1[idx1],
    }


class Flow3DScenes(Dataset):
    """``size`` scenes of one split; with ``endless`` any index >= 0 is a scene (see :class:`FreshScenes`)."""

    def __init__(self, size: int, split: str, seed: int, scene_args: dict, endless: bool = False):
        self.size, self.split_id, self.seed, self.scene_args = int(size), SPLITS[split], int(seed), scene_args
        self.endless = endless

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        if i < 0 or (i >= self.size and not self.endless):
            raise IndexError(i)
        scene = generate_scene(np.random.default_rng([self.seed, self.split_id, i]), **self.scene_args)
        return {key: torch.as_tensor(value, dtype=torch.float32) for key, value in scene.items()}


class FreshScenes(Sampler):
    """Epoch e visits scenes ``e * size ... (e + 1) * size - 1`` of the endless training stream, shuffled:
    every epoch trains on new scenes. Seeded by the data seed and the epoch, so runs repeat exactly."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = int(size), int(seed), 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        start, self.epoch = self.epoch * self.size, self.epoch + 1
        return iter((start + order).tolist())


class Flow3DDataModule(SceneFlowDataModule):
    def __init__(
        self,
        batch_size: int = 8,
        num_points: int = 512,
        sizes: tuple[int, int, int] = (64, 32, 200),
        seed: int = 0,
        fresh_train_scenes: bool = True,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        **scene_args,
    ):
        super().__init__(batch_size, num_workers, eval_batch_size)
        if len(sizes) != 3 or min(sizes) < 1:
            raise UserError(f"data.sizes must be three positive scene counts (train, val, test), got {list(sizes)}")
        if int(num_points) < 16:
            raise UserError(f"data.num_points must be at least 16, got {num_points}")
        unknown = set(scene_args) - set(generate_scene.__code__.co_varnames[1 : generate_scene.__code__.co_argcount])
        if unknown:
            raise UserError(f"unknown flow3d option(s): {', '.join(sorted(unknown))}")
        for key in ("num_objects", "object_size"):
            if key in scene_args:
                scene_args[key] = tuple(scene_args[key])
        self.num_points, self.sizes, self.seed = int(num_points), tuple(int(s) for s in sizes), int(seed)
        self.fresh_train_scenes = bool(fresh_train_scenes)
        self.scene_args = {"num_points": self.num_points, **scene_args}
        self.info = self._info()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set, self.val_set, self.test_set = (
            Flow3DScenes(size, split, self.seed, self.scene_args, endless=split == "train" and self.fresh_train_scenes)
            for size, split in zip(self.sizes, SPLITS)
        )

    def train_sampler(self, dataset: Dataset) -> Sampler | None:
        return FreshScenes(self.sizes[0], self.seed) if self.fresh_train_scenes else None


@DATASETS.register("flow3d")
def flow3d(**kwargs) -> Flow3DDataModule:
    return Flow3DDataModule(**kwargs)
