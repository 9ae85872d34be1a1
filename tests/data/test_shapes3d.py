"""shapes3d: seeded procedural clouds; voxelization into spconv inputs."""

import pytest
import torch
from pytorch_lightning.utilities import move_data_to_device

from sparse_lab.batches import VoxelBatch
from sparse_lab.data import build_datamodule, shapes3d
from sparse_lab.data.points import VoxelCollate, voxelize
from sparse_lab.data.shapes3d import CLASSES, make_split
from sparse_lab.errors import UserError

ARGS = dict(
    num_points=128, noise=0.02, partial_prob=0.5, max_cut=0.45, clutter=0.08, stretch=0.2, scale_range=(0.55, 0.9)
)


def test_generation_is_seeded_balanced_and_bounded():
    a_pts, a_lab = make_split(48, seed=3, num_classes=12, **ARGS)
    shapes3d._SPLITS.clear()  # generate again rather than read the process cache
    b_pts, b_lab = make_split(48, seed=3, num_classes=12, **ARGS)
    c_pts, _ = make_split(48, seed=4, num_classes=12, **ARGS)
    assert len(CLASSES) >= 8
    assert a_pts.shape == (48, 128, 3) and a_pts.dtype == torch.float32
    assert a_pts is not b_pts and torch.equal(a_lab, b_lab) and torch.equal(a_pts, b_pts)
    assert not torch.allclose(a_pts, c_pts)
    assert torch.bincount(a_lab, minlength=12).tolist() == [4] * 12
    assert a_pts.abs().max() <= 1.0


def test_classes_differ_in_shape():
    # the same seed, two classes: different clouds (a sampler bug that ignored the label would fail)
    clean = {**ARGS, "noise": 0.0, "partial_prob": 0.0, "clutter": 0.0, "stretch": 0.0}
    pts, labels = make_split(24, seed=0, num_classes=12, **clean)
    radii = {int(y): (p - p.mean(0)).norm(dim=1) for p, y in zip(pts, labels)}
    sphere, cube = radii[CLASSES.index("sphere")], radii[CLASSES.index("cube")]
    assert sphere.std() / sphere.mean() < 0.05  # all points at one radius (up to the centroid's error)
    assert cube.std() / cube.mean() > 2 * sphere.std() / sphere.mean()


def test_voxelize_hand_built():
    points = torch.tensor(
        [
            [[-1.0, -1.0, -1.0], [-0.9, -0.9, -0.9], [0.99, 0.0, 0.0]],  # two points share a voxel
            [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ]
    )
    batch = voxelize(points, voxel_size=0.5)  # 4^3 grid
    assert batch.spatial_shape == (4, 4, 4) and batch.batch_size == 2
    assert batch.coords.dtype == torch.int32
    assert batch.coords.tolist() == [[0, 0, 0, 0], [0, 2, 2, 3], [1, 2, 2, 2]]  # (b, z, y, x), sorted
    torch.testing.assert_close(batch.features[0], torch.tensor([-0.95, -0.95, -0.95, 1.0]))
    torch.testing.assert_close(batch.features[2], torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_datamodule_batches_and_example_input():
    dm = build_datamodule("shapes3d", train_size=24, val_size=12, test_size=12, num_points=64, batch_size=8)
    assert dm.info.modality == "point_cloud" and dm.info.num_classes == 12
    assert dm.info.sizes == {"in_chans": 4, "grid_size": 16}
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert isinstance(x, VoxelBatch) and len(x) == 8 and y.shape == (8,)
    assert x.coords[:, 0].unique().tolist() == list(range(8))
    assert int(x.coords[:, 1:].max()) < 16 and int(x.coords.min()) >= 0
    ex = move_data_to_device(dm.example_input(), torch.device("cpu"))
    assert isinstance(ex, VoxelBatch) and ex.batch_size == 1 and (ex.coords[:, 0] == 0).all()


def test_augmentation_keeps_clouds_in_bounds():
    torch.manual_seed(0)
    pts, labels = make_split(8, seed=0, num_classes=8, **ARGS)
    x, _ = VoxelCollate(0.0625, augment=True)(list(zip(pts, labels)))
    assert x.features[:, :3].abs().max() <= 1.0 and len(x) == 8


@pytest.mark.parametrize("bad", [dict(voxel_size=0.0), dict(num_classes=30), dict(clutter=1.5), dict(train_size=0)])
def test_bad_options_are_user_errors(bad):
    with pytest.raises(UserError):
        build_datamodule("shapes3d", **bad)
