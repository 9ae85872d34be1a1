"""flyingthings3d / kitti_sf on tiny files written in HPLFlowNet's layouts."""

import numpy as np
import pytest
import torch

from sparse_lab.data import build_datamodule
from sparse_lab.errors import UserError


def write_scene(folder, pc1, pc2):
    folder.mkdir(parents=True)
    np.save(folder / "pc1.npy", pc1.astype(np.float32))
    np.save(folder / "pc2.npy", pc2.astype(np.float32))


def write_flyingthings(root, n_train=4, n_val=2, n=40):
    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), ("val", n_val)):
        for i in range(count):
            pc1 = rng.uniform(-5, 5, (n, 3))
            pc1[:, 2] = -rng.uniform(1, 30, n)  # stored with negative z (the loader negates x and z)
            pc1[:5, 2] = -50.0  # beyond 35 m after the flip: dropped
            write_scene(root / "FlyingThings3D_subset_processed_35m" / split / f"{i:07d}", pc1, pc1 + [0.1, 0.2, -0.3])


def test_flyingthings3d_layout_flip_depth_limit_and_sampling(tmp_path):
    write_flyingthings(tmp_path)
    dm = build_datamodule(
        "flyingthings3d", data_dir=str(tmp_path), num_points=16, batch_size=2, val_fraction=0.25, num_workers=0
    )
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (3, 1, 2)
    s = dm.test_set[0]
    assert s["pc1"].shape == s["pc2"].shape == s["flow"].shape == (16, 3)
    # x and z negated: stored flow (0.1, 0.2, -0.3) reads (-0.1, 0.2, 0.3); depth positive and < 35 m.
    assert torch.allclose(s["flow"], torch.tensor([-0.1, 0.2, 0.3]).expand(16, 3), atol=1e-5)
    assert bool((s["pc1"][:, 2] > 0).all()) and bool((s["pc1"][:, 2] < 35).all())
    # pc2 sampled independently of pc1 (HPLFlowNet NO_CORR), evaluation samples fixed.
    assert not torch.allclose(s["pc1"] + s["flow"], s["pc2"])
    assert torch.equal(dm.test_set[0]["pc1"], s["pc1"])
    batch = next(iter(dm.train_dataloader()))
    assert batch["pc1"].shape == (2, 16, 3)
    assert dm.info.task == "scene_flow" and dm.info.sizes == {"num_points": 16}


def test_kitti_removes_ground_and_far_points(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(5):
        pc1 = np.stack([rng.uniform(-5, 5, 30), rng.uniform(-1.0, 1.0, 30), rng.uniform(2, 30, 30)], 1)
        pc1[:10, 1] = -1.6  # ground
        pc1[10:12, 2] = 40.0  # too far
        write_scene(tmp_path / "KITTI_processed_occ_final" / f"{i:06d}", pc1, pc1 + [0.0, 0.0, -0.5])
    dm = build_datamodule("kitti_sf", data_dir=str(tmp_path), num_points=8, split=[0.6, 0.2, 0.2], num_workers=0)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (3, 1, 1)
    ds = dm.test_set
    pc1, pc2, keep = ds.load(ds.folders[0])
    assert keep.sum() == 18 and bool((pc1[keep, 1] >= -1.4).all()) and bool((pc1[keep, 2] < 35).all())
    s = ds[0]
    assert s["pc1"].shape == (8, 3) and bool((s["pc1"][:, 1] >= -1.4).all())
    assert torch.allclose(s["flow"], torch.tensor([0.0, 0.0, -0.5]).expand(8, 3))


def test_fewer_valid_points_than_asked_are_padded_by_resampling(tmp_path):
    write_flyingthings(tmp_path, n=12)  # 7 valid points per scene
    dm = build_datamodule("flyingthings3d", data_dir=str(tmp_path), num_points=32, num_workers=0)
    dm.setup()
    assert dm.test_set[0]["pc1"].shape == (32, 3)


@pytest.mark.parametrize(
    "name, folder",
    [("flyingthings3d", "FlyingThings3D_subset_processed_35m/train"), ("kitti_sf", "KITTI_processed_occ_final")],
)
def test_missing_dataset_says_where_it_looked(tmp_path, name, folder):
    dm = build_datamodule(name, data_dir=str(tmp_path / "nowhere"), num_workers=0)
    with pytest.raises(UserError, match=f"{name} not found: missing .*nowhere/{folder}") as info:
        dm.setup()
    assert "\n" not in str(info.value)


def test_corrupt_file_is_a_user_error(tmp_path):
    write_flyingthings(tmp_path)
    (tmp_path / "FlyingThings3D_subset_processed_35m/val/0000001/pc2.npy").write_bytes(b"garbage")
    dm = build_datamodule("flyingthings3d", data_dir=str(tmp_path), num_workers=0)
    with pytest.raises(UserError, match=r"0000001/pc2.npy is unreadable \(not a .npy file\)"):
        dm.setup()  # every scene's files are checked (headers only) when the data is set up, not mid-training
