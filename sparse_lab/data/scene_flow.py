"""Scene-flow data: pairs of point clouds with the ground-truth flow of the first frame's points.

A sample is a dict of float32 tensors ``pc1`` [N, 3], ``pc2`` [N, 3] (the two frames) and ``flow``
[N, 3] (where each point of ``pc1`` moves to); batches stack them to [B, N, 3]. Models receive
``{"pc1", "pc2"}`` only.

Real datasets in the HPLFlowNet preprocessing (Gu et al., CVPR 2019, ``datasets/`` and
``transforms.py`` of their code), read from ``paths.data_dir``:

- ``flyingthings3d``: ``FlyingThings3D_subset_processed_35m/{train,val}/<7-digit id>/pc1.npy, pc2.npy``;
  x and z negated on load (HPLFlowNet does so for the subset), ``train/`` trains (a seeded
  ``val_fraction`` held out for validation), ``val/`` is the test split, as in HPLFlowNet/FLOT/SCTN.
- ``kitti_sf``: ``KITTI_processed_occ_final/<6-digit id>/pc1.npy, pc2.npy``; ground removed
  (points with y < -1.4 m in both frames). HPLFlowNet evaluates on all 142 scenes without training;
  here the scenes are split by ``split`` fractions so a run can also fine-tune.

Both: ``pc2.npy`` row i is where ``pc1.npy`` row i moves (flow = pc2 - pc1); points at depth
z >= 35 m in either frame are dropped; then ``num_points`` (8192) points are sampled for ``pc1`` and,
independently, for ``pc2`` (HPLFlowNet's ``NO_CORR``), so the second frame holds no exact
correspondences. *Ours*: a frame with fewer valid points is padded by sampling with replacement
(HPLFlowNet skips it); training samples are drawn afresh each epoch, evaluation samples are fixed by
``sample_seed``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from sparse_lab.data import DATASETS
from sparse_lab.data.base import ImageDataModule, require_samples, seeded_split
from sparse_lab.errors import UserError
from sparse_lab.protocols import DataInfo

DEPTH_THRESHOLD = 35.0  # metres (HPLFlowNet, DEPTH_THRESHOLD)
KITTI_GROUND_Y = -1.4  # metres (HPLFlowNet, kitti.py remove_ground)


class SceneFlowDataModule(ImageDataModule):
    """Batches of ``{"pc1", "pc2", "flow"}``; the shared loaders come from the image base class."""

    num_points: int

    def _info(self) -> DataInfo:
        return DataInfo("point_cloud_pair", num_classes=0, task="scene_flow", sizes=dict(num_points=self.num_points))

    def example_input(self) -> dict:
        """The first test pair, batch size 1 (sparse convolutions' cost depends on the actual points)."""
        self.setup("test")
        sample = self.test_set[0]
        return {key: sample[key].unsqueeze(0) for key in ("pc1", "pc2")}


def sample_pair(
    pc1: np.ndarray,
    pc2: np.ndarray,
    num_points: int,
    rng: np.random.Generator,
    valid: np.ndarray | None = None,
    where: str = "a scene-flow sample",
) -> dict:
    """HPLFlowNet sampling: flow = pc2 - pc1 on corresponding rows; independent indices for each frame."""
    flow = pc2 - pc1
    indices = np.flatnonzero(valid) if valid is not None else np.arange(len(pc1))
    if len(indices) == 0:
        raise UserError(f"{where} has no point within the depth limit ({DEPTH_THRESHOLD:g} m; KITTI: above the ground)")
    replace = len(indices) < num_points
    idx1 = rng.choice(indices, size=num_points, replace=replace)
    idx2 = rng.choice(indices, size=num_points, replace=replace)
    return {
        "pc1": torch.as_tensor(pc1[idx1], dtype=torch.float32),
        "pc2": torch.as_tensor(pc2[idx2], dtype=torch.float32),
        "flow": torch.as_tensor(flow[idx1], dtype=torch.float32),
    }


class HPLFlowNetScenes(Dataset):
    """Scenes in HPLFlowNet's layout: one folder per scene holding ``pc1.npy`` and ``pc2.npy``."""

    def __init__(self, folders: list[Path], dataset: str, num_points: int, train: bool, sample_seed: int = 0):
        self.folders, self.dataset, self.num_points = folders, dataset, int(num_points)
        self.train, self.sample_seed = train, int(sample_seed)

    def __len__(self) -> int:
        return len(self.folders)

    def load(self, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The two frames (all points) and which rows are kept by HPLFlowNet's rules."""
        frames = []
        for name in ("pc1.npy", "pc2.npy"):
            try:
                array = np.load(folder / name)
            except Exception as exc:
                raise UserError(f"{self.dataset} file {folder / name} is unreadable ({type(exc).__name__})") from None
            check_frame(folder / name, array, self.dataset)
            frame = array.astype(np.float32)[:, :3]
            if not np.isfinite(frame).all():
                raise UserError(f"{self.dataset} file {folder / name} has non-finite coordinates (NaN or inf)")
            frames.append(frame)
        pc1, pc2 = frames
        check_pair(folder, pc1.shape, pc2.shape, self.dataset)
        keep = np.ones(len(pc1), dtype=bool)
        if self.dataset == "flyingthings3d":
            pc1[:, [0, 2]] *= -1  # HPLFlowNet: "multiply -1 only for subset datasets"
            pc2[:, [0, 2]] *= -1
        else:  # kitti_sf: ground removal
            keep &= ~((pc1[:, 1] < KITTI_GROUND_Y) & (pc2[:, 1] < KITTI_GROUND_Y))
        keep &= (pc1[:, 2] < DEPTH_THRESHOLD) & (pc2[:, 2] < DEPTH_THRESHOLD)
        return pc1, pc2, keep

    def __getitem__(self, i: int) -> dict:
        pc1, pc2, keep = self.load(self.folders[i])
        if self.train:  # fresh points every epoch, from the (seeded) global torch generator
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))
        else:
            rng = np.random.default_rng([self.sample_seed, i])
        return sample_pair(pc1, pc2, self.num_points, rng, keep, where=f"{self.dataset} scene {self.folders[i]}")


def check_frame(path: Path, array: np.ndarray, dataset: str) -> None:
    """A frame is [N, 3+] real numbers (x, y, z first)."""
    numeric = np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    if array.ndim != 2 or array.shape[1] < 3 or not numeric:
        raise UserError(
            f"{dataset} file {path} holds a {array.dtype} array of shape {list(array.shape)}, "
            "expected [N, 3] numbers (x, y, z per row)"
        )


def check_pair(folder: Path, shape1: tuple, shape2: tuple, dataset: str) -> None:
    if tuple(shape1) != tuple(shape2):
        raise UserError(
            f"{dataset} scene {folder}: pc1.npy and pc2.npy differ in shape ({list(shape1)} vs {list(shape2)})"
        )
    if shape1[0] == 0:
        raise UserError(f"{dataset} scene {folder}: pc1.npy and pc2.npy hold no points")


def check_scene(folder: Path, dataset: str) -> None:
    """A scene's two frames from their .npy headers alone (memory-mapped, ~0.1 ms a file): a missing,
    truncated or foreign file, a wrong shape or dtype is found when the data is set up, not mid-training."""
    shapes = []
    for name in ("pc1.npy", "pc2.npy"):
        path = folder / name
        if not path.is_file():
            raise UserError(f"{dataset} scene {folder} has no {name}")
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise UserError(f"{dataset} file {path} is unreadable (not a .npy file)")
        try:
            array = np.load(path, mmap_mode="r")
        except Exception as exc:  # truncated ("mmap length is greater than file size"), a bad header, objects
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"{dataset} file {path} is unreadable ({reason})") from None
        check_frame(path, array, dataset)
        shapes.append(array.shape)
    check_pair(folder, *shapes, dataset)


def scene_folders(root: Path, dataset: str, hint: str) -> list[Path]:
    """Sorted scene folders under ``root`` (each with pc1.npy), their files checked; a one-line UserError
    if there are none or one is broken."""
    if not root.is_dir():
        raise UserError(f"{dataset} not found: missing {root} ({hint})")
    folders = sorted(p for p in root.iterdir() if (p / "pc1.npy").is_file())
    if not folders:
        raise UserError(f"{dataset} not found: no <scene>/pc1.npy under {root} ({hint})")
    for folder in folders:
        check_scene(folder, dataset)
    return folders


class FlyingThings3DDataModule(SceneFlowDataModule):
    FOLDER = "FlyingThings3D_subset_processed_35m"

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 8,
        num_points: int = 8192,
        val_fraction: float = 0.05,
        split_seed: int = 0,
        sample_seed: int = 0,
        num_workers: int = 2,
    ):
        super().__init__(batch_size, num_workers)
        self.root = Path(data_dir) / self.FOLDER
        self.num_points, self.val_fraction = int(num_points), val_fraction
        self.split_seed, self.sample_seed = int(split_seed), int(sample_seed)
        self.info = self._info()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hint = f"set paths.data_dir to the folder holding {self.FOLDER}/"
        train = scene_folders(self.root / "train", "flyingthings3d", hint)
        test = scene_folders(self.root / "val", "flyingthings3d", hint)
        train_idx, val_idx = seeded_split(len(train), (1 - self.val_fraction, self.val_fraction), self.split_seed)
        self.train_set = HPLFlowNetScenes([train[i] for i in train_idx], "flyingthings3d", self.num_points, True)
        self.val_set = HPLFlowNetScenes(
            [train[i] for i in val_idx], "flyingthings3d", self.num_points, False, self.sample_seed
        )
        self.test_set = HPLFlowNetScenes(test, "flyingthings3d", self.num_points, False, self.sample_seed)
        require_samples(
            f"flyingthings3d at {self.root}",
            {"train": self.train_set, "val": self.val_set, "test": self.test_set},
        )


class KittiSceneFlowDataModule(SceneFlowDataModule):
    FOLDER = "KITTI_processed_occ_final"

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 8,
        num_points: int = 8192,
        split: tuple[float, float, float] = (0.6, 0.1, 0.3),
        split_seed: int = 0,
        sample_seed: int = 0,
        num_workers: int = 2,
    ):
        super().__init__(batch_size, num_workers)
        if len(split) != 3 or abs(sum(split) - 1.0) > 1e-6 or min(split) < 0 or split[2] <= 0:
            raise UserError(f"data.split must be three fractions summing to 1 with a test part, got {list(split)}")
        self.root = Path(data_dir) / self.FOLDER
        self.num_points, self.split = int(num_points), tuple(split)
        self.split_seed, self.sample_seed = int(split_seed), int(sample_seed)
        self.info = self._info()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        scenes = scene_folders(self.root, "kitti_sf", f"set paths.data_dir to the folder holding {self.FOLDER}/")
        parts = seeded_split(len(scenes), self.split, self.split_seed)
        self.train_set, self.val_set, self.test_set = (
            HPLFlowNetScenes([scenes[i] for i in idx], "kitti_sf", self.num_points, train, self.sample_seed)
            for idx, train in zip(parts, (True, False, False))
        )
        require_samples(
            f"kitti_sf at {self.root} ({len(scenes)} scene{'s' * (len(scenes) != 1)}, split {list(self.split)})",
            {"train": self.train_set, "val": self.val_set, "test": self.test_set},
            allow_empty=("train",) if self.split[0] == 0 else (),  # [0, 0, 1]: HPLFlowNet's test-only protocol
        )


@DATASETS.register("flyingthings3d")
def flyingthings3d(**kwargs) -> FlyingThings3DDataModule:
    return FlyingThings3DDataModule(**kwargs)


@DATASETS.register("kitti_sf")
def kitti_sf(**kwargs) -> KittiSceneFlowDataModule:
    return KittiSceneFlowDataModule(**kwargs)
