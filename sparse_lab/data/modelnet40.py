"""ModelNet40 in the standard resampled layout (PointNet++'s ``modelnet40_normal_resampled``). Never downloads.

Layout under ``<data_dir>/modelnet40_normal_resampled/``::

    modelnet40_shape_names.txt      one class name per line (line order = label)
    modelnet40_train.txt            sample ids, e.g. airplane_0001
    modelnet40_test.txt
    <class>/<class>_0001.txt        one point per line: x,y,z,nx,ny,nz (10000 points in the release)

The first ``num_points`` points of each file are used (the release's resampled order), centred and
scaled into the unit ball; normals are not used. Parsed splits are cached as ``.npz`` next to the data
when the folder is writable (a cache whose files changed is rebuilt).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from sparse_lab.data import DATASETS
from sparse_lab.data.base import holdout_split, require_samples
from sparse_lab.data.points import VOXEL_FEATURES, PointCloudDataModule, PointsDataset, normalize_unit_sphere
from sparse_lab.errors import UserError
from sparse_lab.protocols import DataInfo

log = logging.getLogger(__name__)

FOLDER = "modelnet40_normal_resampled"


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"modelnet40 not found: missing {path} (set paths.data_dir to the folder holding {FOLDER}/)")
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"modelnet40 file {path} is unreadable ({type(exc).__name__}): not a text list") from None
    if not lines:
        raise UserError(f"modelnet40 file {path} is empty")
    return lines


def _read_cache(cache: Path, expected: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached clouds and labels, or None if the cache is unreadable or holds another count."""
    try:
        data = np.load(cache)
        if len(data["labels"]) == expected:
            return torch.from_numpy(data["points"]), torch.from_numpy(data["labels"])
    except (OSError, ValueError, KeyError):
        pass
    return None


def read_split(root: Path, split: str, num_points: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Clouds ``[N, num_points, 3]`` (unit ball), labels ``[N]`` and class names of one split."""
    names = _read_lines(root / "modelnet40_shape_names.txt")
    index = {name: i for i, name in enumerate(names)}
    ids = _read_lines(root / f"modelnet40_{split}.txt")
    cache = root / f".sparse_lab_{split}_{num_points}.npz"
    if cache.is_file() and cache.stat().st_mtime >= (root / f"modelnet40_{split}.txt").stat().st_mtime:
        cached = _read_cache(cache, len(ids))  # None when damaged or stale: parse the text files again
        if cached is not None:
            return (*cached, names)
    clouds, labels = [], []
    for sample in ids:
        cls = sample.rsplit("_", 1)[0]
        if cls not in index:
            raise UserError(f"modelnet40: sample {sample!r} in modelnet40_{split}.txt has unknown class {cls!r}")
        path = root / cls / f"{sample}.txt"
        if not path.is_file():
            raise UserError(f"modelnet40 incomplete: missing {path}")
        try:
            values = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2, max_rows=num_points)
        except ValueError as exc:
            raise UserError(f"modelnet40 file {path} is unreadable ({exc})") from None
        if values.shape[1] < 3 or len(values) == 0:
            raise UserError(f"modelnet40 file {path} has no x,y,z rows")
        if not np.isfinite(values[:, :3]).all():
            raise UserError(f"modelnet40 file {path} has non-finite coordinates (NaN or inf)")
        points = values[:, :3]
        if len(points) < num_points:  # short file: repeat points (deterministically) to the fixed size
            points = points[np.arange(num_points) % len(points)]
        clouds.append(points)
        labels.append(index[cls])
    points = normalize_unit_sphere(torch.from_numpy(np.stack(clouds)))
    labels = torch.as_tensor(labels, dtype=torch.long)
    try:
        np.savez(cache, points=points.numpy(), labels=labels.numpy())
    except OSError:
        log.debug("modelnet40: cannot write cache %s", cache)
    return points, labels, names


class ModelNet40DataModule(PointCloudDataModule):
    def __init__(
        self,
        data_dir: str,
        batch_size: int = 32,
        voxel_size: float = 0.05,
        num_points: int = 1024,
        num_classes: int = 40,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        augment: bool = True,
        num_workers: int = 0,
    ):
        # Augmentation rotates about the up axis only: ModelNet40 shapes are aligned.
        super().__init__(batch_size, voxel_size, augment, num_workers, up_axis_only=True)
        if int(num_points) < 1:
            raise UserError(f"data.num_points must be at least 1, got {num_points}")
        self.root = Path(data_dir).absolute() / FOLDER
        self.num_points, self.val_fraction, self.split_seed = int(num_points), float(val_fraction), int(split_seed)
        self.info = DataInfo(
            "point_cloud", num_classes=int(num_classes), sizes=dict(in_chans=VOXEL_FEATURES, grid_size=self.grid_size)
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_points, train_labels, names = read_split(self.root, "train", self.num_points)
        test_points, test_labels, _ = read_split(self.root, "test", self.num_points)
        if len(names) != self.info.num_classes:
            raise UserError(
                f"modelnet40: {len(names)} classes in modelnet40_shape_names.txt but "
                f"data.num_classes={self.info.num_classes}"
            )
        self.train_set, self.val_set = holdout_split(
            PointsDataset(train_points, train_labels), self.val_fraction, self.split_seed
        )
        self.test_set = PointsDataset(test_points, test_labels)
        require_samples(
            f"modelnet40 at {self.root}",
            {"train": self.train_set, "val": self.val_set, "test": self.test_set},
        )


@DATASETS.register("modelnet40")
def modelnet40(**kwargs) -> ModelNet40DataModule:
    return ModelNet40DataModule(**kwargs)
