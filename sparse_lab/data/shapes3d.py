"""shapes3d: procedurally generated, seeded point clouds of 12 geometric solids. Nothing is downloaded.

Each cloud samples a solid's surface, then makes it harder in the ways real scans are hard:

- pose and shape: uniformly random 3D rotation, overall scale, per-axis stretch, small offset;
- partial views: with probability ``partial_prob`` a random plane cuts away part of the surface
  (up to ``max_cut`` of it), as self-occlusion in a single view does;
- noise: Gaussian jitter of ``noise`` (fraction of the unit radius) on every point;
- clutter: a fraction ``clutter`` of the points are outliers spread uniformly in the bounding cube;
- few points: ``num_points`` per cloud (default 384).

Classes: sphere, cube, cylinder, cone, torus, square pyramid, tetrahedron, octahedron, capsule,
hemisphere, dumbbell (two spheres joined), cross (three orthogonal bars). Several pairs are close
(cylinder/capsule, cone/pyramid, pyramid/tetrahedron, sphere/octahedron under noise, hemisphere vs a cut
sphere), so a model does not saturate. Splits are generated from ``seed`` independently of the run seed:
every run tests on the same clouds.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sparse_lab.data import DATASETS
from sparse_lab.data.points import VOXEL_FEATURES, PointCloudDataModule, PointsDataset
from sparse_lab.errors import UserError, check_range
from sparse_lab.protocols import DataInfo

CLASSES = (
    "sphere",
    "cube",
    "cylinder",
    "cone",
    "torus",
    "pyramid",
    "tetrahedron",
    "octahedron",
    "capsule",
    "hemisphere",
    "dumbbell",
    "cross",
)


# --- surface samplers: n points on a solid of radius about 1, centred at the origin -----------------


def _triangles(rng: np.random.Generator, tris: np.ndarray, n: int) -> np.ndarray:
    """Area-weighted uniform samples on triangles ``[T, 3, 3]``."""
    a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    pick = rng.choice(len(tris), size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    return a[pick] + u[:, None] * (b - a)[pick] + v[:, None] * (c - a)[pick]


def _box_tris(half: np.ndarray, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float) * half + centre
    faces = [(0, 1, 3, 2), (4, 5, 7, 6), (0, 1, 5, 4), (2, 3, 7, 6), (0, 2, 6, 4), (1, 3, 7, 5)]
    return np.array(
        [[corners[f[0]], corners[f[1]], corners[f[2]]] for f in faces]
        + [[corners[f[0]], corners[f[2]], corners[f[3]]] for f in faces]
    )


def _sphere_dirs(rng, n):
    d = rng.normal(size=(n, 3))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _disc(rng, n, radius, z):
    r = radius * np.sqrt(rng.random(n))
    t = rng.random(n) * 2 * math.pi
    return np.stack([r * np.cos(t), r * np.sin(t), np.full(n, z)], 1)


def _tube(rng, n, radius, z0, z1):
    t = rng.random(n) * 2 * math.pi
    return np.stack([radius * np.cos(t), radius * np.sin(t), z0 + (z1 - z0) * rng.random(n)], 1)


def _split(rng, n, weights):
    return rng.multinomial(n, np.asarray(weights, float) / np.sum(weights))


def sphere(rng, n):
    return _sphere_dirs(rng, n)


def cube(rng, n):
    return _triangles(rng, _box_tris(np.full(3, 0.62)), n)


def cylinder(rng, n):
    r, h = 0.6, 0.8
    k = _split(rng, n, [2 * math.pi * r * 2 * h, math.pi * r * r, math.pi * r * r])
    return np.concatenate([_tube(rng, k[0], r, -h, h), _disc(rng, k[1], r, -h), _disc(rng, k[2], r, h)])


def cone(rng, n):
    r, h = 0.75, 1.4
    slant = math.hypot(r, h)
    k = _split(rng, n, [math.pi * r * slant, math.pi * r * r])
    s = np.sqrt(rng.random(k[0]))  # radius fraction, area-uniform on the lateral surface
    t = rng.random(k[0]) * 2 * math.pi
    side = np.stack([r * s * np.cos(t), r * s * np.sin(t), h / 2 - h * s], 1)
    return np.concatenate([side, _disc(rng, k[1], r, -h / 2)])


def torus(rng, n):
    big, small = 0.68, 0.3
    # rejection-free approximation: weight the tube angle by its circumference factor
    u = rng.random(n) * 2 * math.pi
    v = rng.random(4 * n) * 2 * math.pi
    keep = rng.random(4 * n) < (big + small * np.cos(v)) / (big + small)
    v = np.resize(v[keep], n)
    ring = big + small * np.cos(v)
    return np.stack([ring * np.cos(u), ring * np.sin(u), small * np.sin(v)], 1)


def _polyhedron(rng, n, vertices, faces):
    vertices = np.asarray(vertices, float)
    return _triangles(rng, np.array([[vertices[i] for i in f] for f in faces]), n)


def pyramid(rng, n):
    b, h = 0.72, 1.3
    v = [(-b, -b, -h / 2), (b, -b, -h / 2), (b, b, -h / 2), (-b, b, -h / 2), (0, 0, h / 2)]
    return _polyhedron(rng, n, v, [(0, 1, 2), (0, 2, 3), (0, 1, 4), (1, 2, 4), (2, 3, 4), (3, 0, 4)])


def tetrahedron(rng, n):
    v = np.array([(1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)], float) * 0.62
    return _polyhedron(rng, n, v, [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)])


def octahedron(rng, n):
    v = np.array([(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)], float) * 0.95
    faces = [(a, b, c) for a in (0, 1) for b in (2, 3) for c in (4, 5)]
    return _polyhedron(rng, n, v, faces)


def capsule(rng, n):
    r, h = 0.45, 0.5
    k = _split(rng, n, [2 * math.pi * r * 2 * h, 4 * math.pi * r * r])
    caps = _sphere_dirs(rng, k[1]) * r
    caps[:, 2] += np.where(caps[:, 2] >= 0, h, -h)
    return np.concatenate([_tube(rng, k[0], r, -h, h), caps])


def hemisphere(rng, n):
    k = _split(rng, n, [2 * math.pi, math.pi])
    dome = _sphere_dirs(rng, k[0])
    dome[:, 2] = np.abs(dome[:, 2])
    return np.concatenate([dome, _disc(rng, k[1], 1.0, 0.0)]) - np.array([0, 0, 0.4])


def dumbbell(rng, n):
    k = _split(rng, n, [1, 1, 0.35])
    a = _sphere_dirs(rng, k[0]) * 0.42 + np.array([0, 0, 0.55])
    b = _sphere_dirs(rng, k[1]) * 0.42 - np.array([0, 0, 0.55])
    return np.concatenate([a, b, _tube(rng, k[2], 0.12, -0.2, 0.2)])


def cross(rng, n):
    long, thin = 0.95, 0.2
    bars = [np.array(h) for h in ((long, thin, thin), (thin, long, thin), (thin, thin, long))]
    return _triangles(rng, np.concatenate([_box_tris(h) for h in bars]), n)


SAMPLERS = dict(
    sphere=sphere,
    cube=cube,
    cylinder=cylinder,
    cone=cone,
    torus=torus,
    pyramid=pyramid,
    tetrahedron=tetrahedron,
    octahedron=octahedron,
    capsule=capsule,
    hemisphere=hemisphere,
    dumbbell=dumbbell,
    cross=cross,
)


def _rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def make_cloud(
    rng: np.random.Generator,
    label: int,
    num_points: int,
    noise: float,
    partial_prob: float,
    max_cut: float,
    clutter: float,
    stretch: float,
    scale_range: tuple[float, float],
) -> np.ndarray:
    """One cloud ``[num_points, 3]`` of class ``label``, inside [-1, 1]^3."""
    n_clutter = int(round(clutter * num_points))
    n_shape = num_points - n_clutter
    surface = SAMPLERS[CLASSES[label]](rng, 3 * n_shape)
    if rng.random() < partial_prob:
        # cut away the points beyond a random plane: between 10% and max_cut of the surface
        normal = _sphere_dirs(rng, 1)[0]
        proj = surface @ normal
        cut = rng.uniform(0.1, max_cut)
        surface = surface[proj <= np.quantile(proj, 1.0 - cut)]
    surface = surface[rng.choice(len(surface), size=n_shape, replace=len(surface) < n_shape)]
    surface = surface * (1.0 + stretch * rng.uniform(-1, 1, size=3))  # per-axis stretch in the shape's frame
    surface = surface @ _rotation(rng).T * rng.uniform(*scale_range)
    surface = surface + rng.normal(scale=noise, size=surface.shape) + rng.uniform(-0.08, 0.08, size=3)
    points = np.concatenate([surface, rng.uniform(-1, 1, size=(n_clutter, 3))])
    return np.clip(points[rng.permutation(num_points)], -1.0, 1.0)


_SPLITS: dict = {}  # generated splits of this process, by arguments (generation is ~3 ms per cloud)


def make_split(count: int, seed: int, num_classes: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` clouds, classes balanced (round-robin), seeded. Cached per process (returned read-only
    in spirit: datasets index it, nothing writes to it)."""
    key = (count, seed, num_classes, tuple(sorted(kwargs.items())))
    if key not in _SPLITS:
        _SPLITS[key] = _generate(count, seed, num_classes, **kwargs)
    return _SPLITS[key]


def _generate(count: int, seed: int, num_classes: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % num_classes
    rng.shuffle(labels)
    clouds = np.stack([make_cloud(rng, int(y), **kwargs) for y in labels]).astype(np.float32)
    return torch.from_numpy(clouds), torch.from_numpy(labels).long()


class Shapes3DDataModule(PointCloudDataModule):
    def __init__(
        self,
        batch_size: int = 16,
        voxel_size: float = 0.125,
        num_points: int = 384,
        num_classes: int = 12,
        train_size: int = 2400,
        val_size: int = 300,
        test_size: int = 1200,
        noise: float = 0.02,
        partial_prob: float = 0.3,
        max_cut: float = 0.35,
        clutter: float = 0.04,
        stretch: float = 0.1,
        scale_range: tuple[float, float] = (0.55, 0.9),
        augment: bool = True,
        epoch_size: int | None = 640,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__(batch_size, voxel_size, augment, num_workers, epoch_size=epoch_size)
        if not 2 <= int(num_classes) <= len(CLASSES):
            raise UserError(f"data.num_classes must be in [2, {len(CLASSES)}], got {num_classes}")
        for name, value in (
            ("train_size", train_size),
            ("val_size", val_size),
            ("test_size", test_size),
            ("num_points", num_points),
        ):
            if int(value) < 1:
                raise UserError(f"data.{name} must be at least 1, got {value}")
        check_range("data.partial_prob", partial_prob, 0.0, 1.0, high_inclusive=True)
        check_range("data.max_cut", max_cut, 0.1, 0.9, high_inclusive=True)
        check_range("data.clutter", clutter, 0.0, 1.0)
        check_range("data.noise", noise, 0.0, 1.0)
        check_range("data.stretch", stretch, 0.0, 1.0)
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise UserError(f"data.scale_range must be [low, high] with 0 < low <= high, got {list(scale_range)}")
        self.num_classes = int(num_classes)
        self.sizes_per_split = dict(train=int(train_size), val=int(val_size), test=int(test_size))
        self.cloud_args = dict(
            num_points=int(num_points),
            noise=float(noise),
            partial_prob=float(partial_prob),
            max_cut=float(max_cut),
            clutter=float(clutter),
            stretch=float(stretch),
            scale_range=(float(scale_range[0]), float(scale_range[1])),
        )
        self.seed = int(seed)
        self.info = DataInfo(
            "point_cloud", num_classes=self.num_classes, sizes=dict(in_chans=VOXEL_FEATURES, grid_size=self.grid_size)
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        # Independent seeds per split: changing one split's size never changes another's clouds.
        sets = {}
        for offset, split in enumerate(("train", "val", "test")):
            points, labels = make_split(
                self.sizes_per_split[split],
                seed=self.seed * 1000 + offset,
                num_classes=self.num_classes,
                **self.cloud_args,
            )
            sets[split] = PointsDataset(points, labels)
        self.train_set, self.val_set, self.test_set = sets["train"], sets["val"], sets["test"]


@DATASETS.register("shapes3d")
def shapes3d(**kwargs) -> Shapes3DDataModule:
    return Shapes3DDataModule(**kwargs)
